#!/usr/bin/env bash
# End-to-end check in a real terminal: start the chat app in tmux, type a message, and
# check on the screen (capture-pane) that it was sent and answered.
#
#   scripts/tui_smoke.sh [MODEL]
#
# QWEN_MLX_HOME picks the store; without MODEL the demo model is used (built if needed).
# PYTHON picks the interpreter (default: python).
#
# tmux runs on a private socket with no configuration file, so a tmux server the user
# already has (and its environment, which its panes would inherit) is never involved, and
# the app gets this script's environment explicitly: it opens the store QWEN_MLX_HOME
# names, not the one of whoever started some other tmux server.
set -euo pipefail

model=${1:-}
python=${PYTHON:-python}

if [ -z "$model" ]; then
  "$python" -c "from qwen_mlx.convert.demo import ensure_demo_model; ensure_demo_model()"
  model=qwen3-3m-demo
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/qwen-mlx-smoke.XXXXXX")
socket="$work/tmux.sock"
session=smoke
# remain-on-exit: if the app dies, its last screen (a traceback) stays for the report.
printf 'set -g remain-on-exit on\n' >"$work/tmux.conf"
tmux_() { tmux -S "$socket" -f "$work/tmux.conf" "$@"; }
trap 'tmux_ kill-server 2>/dev/null || true; rm -rf "$work"' EXIT

pass=()
for var in HOME PATH QWEN_MLX_HOME HF_HOME HF_HUB_OFFLINE PYTHONPATH LANG LC_ALL; do
  if [ -n "${!var+set}" ]; then
    pass+=("$var=${!var}")
  fi
done
# Given as separate arguments, the command runs without a shell: no quoting to get wrong.
tmux_ new-session -d -s "$session" -x 120 -y 40 env "${pass[@]}" "$python" -m tui --model "$model"

wait_for() {  # TEXT SECONDS
  for _ in $(seq 1 $(( $2 * 10 ))); do
    if tmux_ capture-pane -p -t "$session" | grep -q -- "$1"; then
      return 0
    fi
    sleep 0.1
  done
  echo "timed out after $2 s waiting for: $1" >&2
  tmux_ capture-pane -p -t "$session" >&2
  return 1
}

wait_for "context" 90            # the status line shows the context meter: model loaded
tmux_ send-keys -t "$session" "/max_tokens 16" Enter
wait_for "max_tokens = 16" 30    # the command's confirmation
tmux_ send-keys -t "$session" "Hello from tmux" Enter
wait_for "Hello from tmux" 30    # the message is on screen
wait_for "tok/s" 90              # the reply finished: its speed is in the status line
tmux_ send-keys -t "$session" C-q
echo "tui smoke test passed"

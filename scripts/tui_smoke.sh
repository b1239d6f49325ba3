#!/usr/bin/env bash
# End-to-end check in a real terminal: start the chat app in tmux, type a message, and
# check on the screen (capture-pane) that it was sent and answered.
#
#   scripts/tui_smoke.sh [MODEL]
#
# QWEN_MLX_HOME picks the store; without MODEL the demo model is used (built if needed).
# PYTHON picks the interpreter (default: python).
set -euo pipefail

model=${1:-}
python=${PYTHON:-python}
session="qwen-mlx-smoke-$$"

if [ -z "$model" ]; then
  "$python" -c "from qwen_mlx.convert.demo import ensure_demo_model; ensure_demo_model()"
  model=qwen3-3m-demo
fi

tmux new-session -d -s "$session" -x 120 -y 40 "$python -m tui --model $model"
trap 'tmux kill-session -t "$session" 2>/dev/null || true' EXIT

wait_for() {  # TEXT SECONDS
  for _ in $(seq 1 $(( $2 * 10 ))); do
    if tmux capture-pane -p -t "$session" | grep -q -- "$1"; then
      return 0
    fi
    sleep 0.1
  done
  echo "timed out after $2 s waiting for: $1" >&2
  tmux capture-pane -p -t "$session" >&2
  return 1
}

wait_for "context" 90            # the status line shows the context meter: model loaded
tmux send-keys -t "$session" "/max_tokens 16" Enter
wait_for "max_tokens = 16" 30    # the command's confirmation
tmux send-keys -t "$session" "Hello from tmux" Enter
wait_for "Hello from tmux" 30    # the message is on screen
wait_for "tok/s" 90              # the reply finished: its speed is in the status line
tmux send-keys -t "$session" C-q
echo "tui smoke test passed"

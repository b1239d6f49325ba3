"""Settings and the model: this chat's sampling parameters, system prompt and context
policy (saved with the chat), the settings dialog, and loading or switching the model.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any

from textual import work

from .screens import (
    ModelPicker,
    SettingsScreen,
)
from .state import AppState, on_model_thread
from .widgets import PromptInput, StatusBar

MODEL_LOOKBACK = 20  # recent chats searched for a model that is still stored


class Settings(AppState):
    """The chat's settings and the model it runs on (a part of ChatApp)."""

    def action_settings(self) -> None:
        if not self._can_reply():
            return
        p = self.session.params
        params = {k: getattr(p, k) for k, _, _ in SettingsScreen.FIELDS}
        self.push_screen(
            SettingsScreen(
                self.session.system or "",
                params,
                self.session.policy.value,
                check=self._params_with,
            ),
            self._apply_settings,
        )

    def _apply_settings(self, values: dict[str, Any] | None) -> None:
        if not values or not self._can_change():
            return
        from qwen_mlx.chat.session import ContextPolicy

        try:  # everything is checked before anything changes
            overrides = self._overrides_with(values["params"])
            params = self._params_with(values["params"])
            policy = ContextPolicy(values["policy"])
        except ValueError as e:
            self.notify(f"Settings not saved: {e}", severity="error")
            return
        self.session.system = values["system"].strip() or None
        self.session.policy = policy
        self.session.params, self.overrides = params, overrides
        self._save_chat_settings()
        self.notify("Settings saved for this chat.")

    def _overrides_with(self, changes: dict[str, Any]) -> dict[str, Any]:
        """This chat's parameter overrides after `changes` (None: back to the default)."""
        current = dict(self.overrides)
        for key, value in changes.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        return current

    def _params_with(self, changes: dict[str, Any]) -> Any:
        """The sampling parameters `changes` would give; ValueError if the sampler refuses."""
        return self.model.default_params.replace(**self._overrides_with(changes))

    def _set_params(self, changes: dict[str, Any]) -> None:
        """Change sampling parameters of this chat (None: back to the model's default)."""
        self.session.params = self._params_with(changes)  # validates
        self.overrides = self._overrides_with(changes)
        self._save_chat_settings()

    def _save_chat_settings(self) -> None:
        if self.chat is not None:
            self.chat.params = dict(self.overrides)
            self.chat.system = self.session.system
            self.chat.policy = self.session.policy.value
            self.store.update(self.chat)

    def action_pick_model(self, name: str | None = None) -> None:
        if not self._idle():
            return
        if name:
            self._load_model(name)
            return
        from qwen_mlx.store import Store

        store = Store(self.home)
        try:
            names = [m.name for m in store.list()] if store.models_dir.is_dir() else []
        finally:
            store.close()
        if not names:
            self.notify("The store has no models (see `qwen-mlx models list`).")
            return
        current = self.model.name if self.model else None
        self.push_screen(ModelPicker(names, current), lambda n: self._load_model(n) if n else None)

    def _default_model(self) -> str | None:
        """The model the user used last: the opened chat's if it is still here, else the
        most recent chat's, else the most recently converted one, never a model used only
        as a draft (nor this run's --draft)."""
        from qwen_mlx.store import Store

        opened = self.store.get(self.initial_chat) if self.initial_chat else None
        recent = self.store.list()[:MODEL_LOOKBACK]
        seen = set()
        store = Store(self.home)
        try:
            for chat in [opened, *recent]:
                if chat is None or not chat.model or chat.model in seen:
                    continue
                seen.add(chat.model)
                if Path(chat.model).expanduser().is_dir():
                    return chat.model
                with suppress(Exception):  # removed, or a name this version does not know
                    if store.models_dir.is_dir() and store.find(chat.model) is not None:
                        return chat.model
            draft = self.draft_ref if self.draft_ref not in (None, "lookup") else None
            return store.recent_model(exclude=(draft,) if draft else ())
        except Exception:
            return None
        finally:
            store.close()

    def _after_no_model(self, built: bool | None) -> None:
        if not built:
            self.exit()
            return
        from qwen_mlx.convert.demo import DEMO_MODEL

        self.query_one("#loading").display = True
        self._load_model(DEMO_MODEL)

    @work(exclusive=True, group="load")
    async def _load_model(self, ref: str) -> None:
        from qwen_mlx.runtime import load

        self._status_text(f"loading {ref}…")
        self._begin_busy(f"loading {ref}", lock_input=False)  # typing goes on meanwhile
        try:
            model = await on_model_thread(lambda: load(ref, **self.load_options))
        except Exception as e:
            self._model_failed(ref, e)
            return
        finally:
            self._end_busy()
        if self.draft_ref:
            self.draft = await self._load_draft(model, self.draft_ref)
        self._model_ready(model)

    async def _load_draft(self, model: Any, ref: str) -> Any:
        """ "lookup", or the draft model for `ref` (None, with a notice, if it is unusable)."""
        if ref == "lookup":
            return "lookup"
        from qwen_mlx.runtime import check_tokenizers, load

        def job() -> Any:
            from qwen_mlx.store import Store

            draft = load(ref)
            check_tokenizers(model, draft)
            # Remembered, so it is never the model a chat opens with when none is named; a
            # read-only or busy store does not stop speculative decoding.
            with suppress(Exception):
                store = Store(self.home)
                try:
                    store.note_draft(ref)
                finally:
                    store.close()
            return draft

        self._begin_busy(f"loading the draft {ref}", lock_input=False)
        try:
            return await on_model_thread(job)
        except Exception as e:
            saved = self.store.setting("draft") == ref
            if saved:  # gone from the store, say: not tried again at every start
                self.store.set_setting("draft", None)
            forgot = " (the saved /draft setting is cleared)" if saved else ""
            self.notify(f"No speculative decoding: {e}{forgot}", severity="error", timeout=10)
            self.draft_ref = None
            return None
        finally:
            self._end_busy()

    def _with_draft(self, session: Any) -> Any:
        if self.draft is not None:
            session.set_draft(self.draft, self.num_draft_tokens)
        return session

    @work(exclusive=True, group="draft")
    async def _set_draft(self, arg: str) -> None:
        """/draft lookup|REF|off: speculative decoding for this chat and the next ones,
        kept as an app setting for the next start of the app (--draft overrides it)."""
        if not arg:
            self.notify(f"Draft: {self.draft_ref or 'off'} (/draft lookup, a model, or off).")
            return
        ref = None if arg == "off" else arg
        draft = await self._load_draft(self.model, ref) if ref else None
        if ref and draft is None:
            return
        self.draft_ref, self.draft = ref, draft
        self.session.set_draft(draft, self.num_draft_tokens)
        self.store.set_setting("draft", ref)
        self.notify(
            f"Draft: {ref} (kept for the next start)."
            if ref
            else "Speculative decoding off (kept for the next start)."
        )

    def _model_failed(self, ref: str, error: Exception) -> None:
        self.query_one("#loading").display = False
        self._status_text(f"no model ({ref} failed to load)")
        self.notify(f"Could not load {ref}: {error}", severity="error", timeout=10)

    def _model_ready(self, model: Any) -> None:
        self.model = model
        self.query_one("#loading").display = False
        self.query_one(StatusBar).model_label = f"{model.name} · {model.quantization_label}"
        self.sub_title = model.name
        initial, self.initial_chat = self.initial_chat, None  # only for the first model
        if self.chat is not None:
            self.chat.model = model.ref
            self.store.update(self.chat)
            self._open_chat(self.chat.id)
        elif initial:
            self._open_chat(initial)  # says so, and starts a new chat, if there is none
        else:
            self._start_new_chat()
        self.query_one(PromptInput).focus()

"""Domain errors. Each subclasses a built-in so callers can catch broadly.

Library code raises these; the front ends (CLI, TUI, server) turn them into messages,
exit codes and HTTP statuses. The message of each should say what to do next.
"""

from __future__ import annotations


class QwenMLXError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = 1


class InvalidCheckpointError(QwenMLXError, ValueError):
    """A source checkpoint is missing files or has damaged ones."""


class UnsupportedModelError(QwenMLXError, ValueError):
    """The checkpoint's architecture is not one we convert or run."""


class InsufficientMemoryError(QwenMLXError, MemoryError):
    """The work would not fit in the memory budget."""


class OutputExistsError(QwenMLXError, FileExistsError):
    """The conversion output already exists and --force was not given."""


class InsufficientDiskError(QwenMLXError, OSError):
    """Not enough free disk space for the output."""


class InvalidNameError(QwenMLXError, ValueError):
    """A model name does not follow the naming convention."""


class ModelNotFoundError(QwenMLXError, FileNotFoundError):
    """A model reference resolves to nothing: not a folder, store name or repo."""


class DamagedModelError(QwenMLXError, ValueError):
    """A stored model's files do not match its manifest."""


class TokenizerMismatchError(QwenMLXError, ValueError):
    """A draft model for speculative decoding does not share the model's tokenizer."""


class RegistryError(QwenMLXError, RuntimeError):
    """The store's registry database cannot be read or written."""


class SchemaTooNewError(QwenMLXError, RuntimeError):
    """A SQLite file was written by a newer qwen-mlx."""


class ChatStoreError(QwenMLXError, RuntimeError):
    """The chat app's saved chats cannot be read."""


class StoreError(QwenMLXError, ValueError):
    """A store operation is not allowed (removing the latest, pinning nothing, ...)."""


class HubUnavailableError(QwenMLXError, ConnectionError):
    """The Hugging Face Hub cannot be reached (offline mode or no network)."""

    exit_code = 3


class QualityGateError(QwenMLXError, ValueError):
    """The quality report says the converted weights are broken."""


class ContextOverflowError(QwenMLXError, ValueError):
    """A turn would not fit in the context window or in memory."""


class GenerationCancelled(QwenMLXError, RuntimeError):
    """Generation (or a long prefill) was stopped on request."""


class ToolServerError(QwenMLXError, ConnectionError):
    """An MCP server cannot be started or reached, or its config is unusable."""


class ChatTemplateError(QwenMLXError, RuntimeError):
    """A model's chat template cannot be used: it does not compile, fails on a plain
    conversation, or a render ran past its bounds (steps, characters or time)."""


class EmptyReplyError(QwenMLXError, ValueError):
    """The model gave no text where a result was needed (a summary, an answer)."""


class RankFailedError(QwenMLXError, ConnectionError):
    """A rank of a model split across processes or Macs stopped, or could not start."""

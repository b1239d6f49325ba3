"""Long documents: summarize them and answer questions about them.

A document that fits in the context (as the memory planner sees it) goes into one prompt;
`ask` keeps it at the start of a cached conversation, so further questions about the same
document read only the question. A document that does not fit is split on its structure
(headings, then paragraphs, then sentences, then words: never inside a word) into chunks
that fit, summarized chunk by chunk (map) and combined (reduce), recursively until one
summary remains. Paragraphs marked `[IMPORTANT]` travel verbatim through every reduce
step and close the final summary.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from ..errors import ContextOverflowError, EmptyReplyError, GenerationCancelled
from ..runtime import Model, SamplingParams, stream_generate, timely_chunk

IMPORTANT = "[IMPORTANT]"
# Prompt wrapping and the reply's own tokens are budgeted on top of a chunk.
PROMPT_OVERHEAD = 96
SUMMARY_TOKENS = 384

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)

_HEADING = re.compile(r"(?m)^(?=#{1,6}\s)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"(?<=\s)(?=\S)")

MAP_PROMPT = (
    "Summarize this part ({index} of {total}) of a longer document in a few sentences. "
    "Keep names, numbers and decisions.\n\n{text}"
)
REDUCE_PROMPT = (
    "Combine these summaries of consecutive parts of one document into a single summary."
    "{important}\n\n{text}"
)
WHOLE_PROMPT = "Summarize this document. Keep names, numbers and decisions.\n\n{text}"
KEEP_PROMPT = "\n\nQuote these passages word for word in the summary:\n{passages}"
NOTES_PROMPT = (
    "Question: {question}\n\nWrite down what this part ({index} of {total}) of a document "
    "says that helps answer the question, or 'nothing'.\n\n{text}"
)
ANSWER_PROMPT = (
    "Answer the question using these notes from a document.\n\nQuestion: {question}\n\n{text}"
)
ASK_SYSTEM = "Answer questions about the following document.\n\n{text}"


def read_document(
    source: str | Path, *, max_chars: int | None = None, max_pages: int | None = None
) -> str:
    """Text of a plain-text, Markdown or PDF file.

    A front end that can only use so much text bounds the work: with `max_chars`, a
    text longer than that is refused (ContextOverflowError) as soon as that is known,
    without extracting the rest of a PDF; with `max_pages`, so is a PDF of more pages.
    """
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No document at {path}.")
    if path.suffix.lower() == ".pdf":
        text = _pdf_text(path, max_chars, max_pages)
        if not text:
            raise ValueError(f"{path} has no extractable text (a scanned PDF needs OCR first).")
        return text
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise ValueError(
            f"{path} looks like a binary file, not text: summarize, ask and attachments "
            "read text, Markdown and PDF files."
        )
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"{path} is empty: there is no text to read.")
    if max_chars is not None and len(text) > max_chars:
        raise _too_long(path, max_chars)
    return text


def _pdf_text(path: Path, max_chars: int | None, max_pages: int | None) -> str:
    """A PDF's text, page by page, within the bounds (see read_document)."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    pages: list[str] = []
    chars = 0
    try:
        with _quiet("pypdf"):  # its warnings on a damaged file repeat our error
            reader = PdfReader(path)
            count = len(reader.pages)
            if max_pages is not None and count > max_pages:
                raise ContextOverflowError(
                    f"{path} has {count:,} pages; at most {max_pages:,} are read here. "
                    "Attach the part you need, or summarize it first (`qwen-mlx summarize`)."
                )
            for page in reader.pages:
                text = (page.extract_text() or "").strip()
                chars += len(text) + 2
                if max_chars is not None and chars > max_chars:
                    raise _too_long(path, max_chars)
                if text:
                    pages.append(text)
    except (PyPdfError, OSError, ValueError) as e:  # PyPdfError: its size limits too
        if isinstance(e, ContextOverflowError):
            raise
        raise ValueError(f"{path} is not a readable PDF ({e}).") from e
    return "\n\n".join(pages)


def _too_long(path: Path, max_chars: int) -> ContextOverflowError:
    return ContextOverflowError(
        f"{path} has more than {max_chars:,} characters of text: more than the context can "
        "hold. Attach the part you need, or summarize it first (`qwen-mlx summarize`)."
    )


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Only errors from `logger_name` while the block runs."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _load(document: str | Path) -> str:
    """A Path is a file to read; a str is always the text itself (guessing would read a
    file that happens to share a short text's name)."""
    if isinstance(document, Path):
        return read_document(document)
    if not isinstance(document, str):
        raise TypeError(f"A document is text (str) or a file (Path), not {type(document)}.")
    return document


def important_passages(text: str) -> list[str]:
    """The paragraphs that carry the [IMPORTANT] mark, verbatim."""
    return [p.strip() for p in _PARAGRAPH.split(text) if IMPORTANT in p]


# -- splitting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # offset in the document
    tokens: int


def _pieces(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Split `text` at the pattern's boundaries, keeping every character."""
    cuts = sorted({m.end() for m in pattern.finditer(text)} - {0, len(text)})
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in pairwise(bounds) if b > a]


def _units(text: str, max_tokens: int, count: Callable[[str], int]) -> list[tuple[str, int]]:
    """(piece, tokens) small enough to pack, split as coarsely as the budget allows."""
    out: list[tuple[str, int]] = []

    def visit(piece: str, level: int) -> None:
        n = count(piece)
        if n <= max_tokens:
            out.append((piece, n))
            return
        patterns = (_HEADING, _PARAGRAPH, _SENTENCE, _WORD)
        for depth in range(level, len(patterns)):
            parts = _pieces(piece, patterns[depth])
            if len(parts) > 1:
                for part in parts:
                    visit(part, depth)
                return
        # A single "word" longer than a whole chunk (a data blob): cut it by characters.
        half = len(piece) // 2
        visit(piece[:half], len(patterns))
        visit(piece[half:], len(patterns))

    visit(text, 0)
    return out


def split_document(text: str, max_tokens: int, count: Callable[[str], int]) -> list[Chunk]:
    """Chunks of at most `max_tokens` tokens that, joined, give back `text` exactly."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive.")
    chunks: list[Chunk] = []
    current: list[str] = []
    size = 0
    start = 0

    def close() -> None:
        nonlocal current, size, start
        if current:
            body = "".join(current)
            chunks.append(Chunk(body, start, count(body)))
            start += len(body)
        current, size = [], 0

    for piece, n in _units(text, max_tokens, count):
        if current and (
            size + n > max_tokens or (piece.startswith("#") and size > max_tokens // 2)
        ):
            close()
        current.append(piece)
        size += n
    close()
    # Token counts of pieces do not quite add up; re-split any chunk that came out too long.
    fixed: list[Chunk] = []
    for chunk in chunks:
        if chunk.tokens <= max_tokens:
            fixed.append(chunk)
            continue
        smaller = split_document(chunk.text, max(max_tokens - 8, max_tokens // 2), count)
        fixed += [Chunk(c.text, chunk.start + c.start, c.tokens) for c in smaller]
    return fixed


# -- summarize ------------------------------------------------------------------------------


@dataclass
class Summary:
    """The summary of a document. When the model's last combining step gave nothing,
    `complete` is False and `text` holds the summaries that step had to combine."""

    text: str
    important: list[str]
    chunks: int  # 1 when the document fit in one prompt
    calls: int  # model calls made
    levels: int  # reduce passes
    complete: bool = True
    empty_calls: int = 0  # model calls that gave no text (their parts are missing)


@dataclass
class _Part:
    text: str
    important: list[str] = field(default_factory=list)


def _context_budget(model: Model, max_context: int | None) -> int:
    from ..runtime.memory import MemoryPlanner

    limit = min(model.context_length, MemoryPlanner.for_model(model).max_context())
    return min(limit, max_context) if max_context else limit


class _Stage:
    """Progress of one stage of model calls, counted in tokens read and written.

    The stage's total is known before its calls run (each call's prompt tokens plus its
    reply limit); a call that ends early jumps to its share, so the count only grows and
    ends at the total."""

    def __init__(self, progress: ProgressFn, name: str, budgets: list[int]) -> None:
        self.progress, self.name = progress, name
        self.total = sum(budgets)
        self.budgets = iter(budgets)
        self.base = 0
        progress(name, 0, self.total)

    def run(self, call: Callable[[Callable[[int], None]], str]) -> str:
        """`call(tick)` runs one model call, ticking the tokens it has read and written."""
        budget = next(self.budgets)
        result = call(
            lambda done: self.progress(self.name, self.base + min(done, budget), self.total)
        )
        self.base += budget
        self.progress(self.name, self.base, self.total)
        return result


def _budget(model: Model, prompt: str, params: SamplingParams) -> int:
    """Tokens one call reads and may write: the prompt (with the chat template) + the reply."""
    return len(model.encode(prompt)) + 16 + params.max_tokens


def _complete(
    model: Model,
    prompt: str,
    params: SamplingParams,
    should_stop: Callable[[], bool] | None = None,
    tick: Callable[[int], None] | None = None,
) -> str:
    """One model call: the prompt as a user message, the reply as text. `tick(n)` follows
    the tokens read, then read and written; the prompt is read in chunks sized to take
    well under a second each on this machine, so progress moves. Raises
    GenerationCancelled when `should_stop` ends it."""
    pieces: list[str] = []
    last = None
    read = 0

    def prefilled(done: int, _total: int) -> None:
        nonlocal read
        read = done
        if tick is not None:
            tick(done)

    for last in stream_generate(
        model,
        [{"role": "user", "content": prompt}],
        params,
        should_stop=should_stop,
        prompt_progress=prefilled,
        prefill_step_size=timely_chunk(model),
    ):
        pieces.append(last.text)
        if tick is not None:
            tick(last.prompt_tokens + last.generation_tokens)
    if last is not None and last.finish_reason == "cancelled":
        raise GenerationCancelled("Stopped.")
    return "".join(pieces).strip()


def _calls(
    model: Model,
    params: SamplingParams,
    progress: ProgressFn,
    stage_name: str,
    prompts: list[str],
    should_stop: Callable[[], bool] | None = None,
) -> list[str]:
    """One model call per prompt, as one stage of progress."""
    stage = _Stage(progress, stage_name, [_budget(model, p, params) for p in prompts])
    return [
        stage.run(lambda tick, p=p: _complete(model, p, params, should_stop, tick)) for p in prompts
    ]


def summarize(
    model: Model,
    document: str | Path,
    *,
    params: SamplingParams | None = None,
    max_context: int | None = None,
    reply_tokens: int = SUMMARY_TOKENS,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Summary:
    """Summarize text (a str) or a file (a Path: .txt, .md, .pdf); map-reduce when it
    does not fit.

    `max_context` caps the tokens one call may use (default: what the model and this
    machine's memory allow); `reply_tokens` caps each summary (and the answer).
    `progress(stage, done, total)` counts the tokens each stage reads and writes
    ("summarize", or "map" then "reduce 1", "reduce 2", ...). `should_stop` is polled
    while the model works: True raises GenerationCancelled.
    """
    text = _load(document)
    params = (params or model.default_params).replace(max_tokens=reply_tokens)
    progress = progress or (lambda *_: None)
    count = _counter(model)
    budget = _context_budget(model, max_context)
    important = important_passages(text)
    room = budget - PROMPT_OVERHEAD - params.max_tokens
    if room <= 0:
        raise ValueError(f"A context of {budget} tokens leaves no room for a document.")

    if count(text) <= room:
        (summary,) = _calls(
            model, params, progress, "summarize", [WHOLE_PROMPT.format(text=text)], should_stop
        )
        if not summary:
            raise EmptyReplyError(_nothing_said(1))
        return Summary(_with_passages(summary, important), important, 1, 1, 0)

    chunks = split_document(text, room, count)
    prompts = [
        MAP_PROMPT.format(index=i, total=len(chunks), text=chunk.text)
        for i, chunk in enumerate(chunks, start=1)
    ]
    summaries = _calls(model, params, progress, "map", prompts, should_stop)
    empty = summaries.count("")
    if empty == len(summaries):
        raise EmptyReplyError(_nothing_said(len(summaries)))
    # A part the model said nothing about brings only its [IMPORTANT] passages, if any.
    parts = [
        _Part(summary, important_passages(chunk.text))
        for summary, chunk in zip(summaries, chunks, strict=True)
        if summary or IMPORTANT in chunk.text
    ]
    calls_made = len(chunks)
    levels = 0
    while len(parts) > 1:
        levels += 1
        groups = _groups(parts, room, count)
        # A passage repeated in the document (or carried up by several parts) is quoted once.
        kept = [
            list(dict.fromkeys(p for part in group for p in part.important)) for group in groups
        ]
        prompts = [
            REDUCE_PROMPT.format(
                important=KEEP_PROMPT.format(passages="\n\n".join(k)) if k else "",
                text="\n\n".join(part.text for part in group),
            )
            for group, k in zip(groups, kept, strict=True)
        ]
        combined = _calls(model, params, progress, f"reduce {levels}", prompts, should_stop)
        calls_made += len(groups)
        empty += combined.count("")
        if not any(combined):
            # Nothing came back from this step: what it was given is the best there is.
            given = "\n\n".join(part.text for part in parts if part.text)
            return Summary(
                _with_passages(given, important),
                important,
                len(chunks),
                calls_made,
                levels,
                complete=False,
                empty_calls=empty,
            )
        merged = [_Part(t, k) for t, k in zip(combined, kept, strict=True) if t or k]
        if len(merged) == len(parts):  # no progress: summaries as long as their inputs
            raise ValueError("The summaries do not get shorter; raise the context budget.")
        parts = merged
    return Summary(
        _with_passages(parts[0].text, important),
        important,
        len(chunks),
        calls_made,
        levels,
        empty_calls=empty,
    )


def _nothing_said(calls: int) -> str:
    which = "call" if calls == 1 else f"{calls} calls"
    return (
        f"The model gave an empty summary (its {which} returned no text): nothing to show. "
        "Try another temperature or seed, or another model."
    )


def _groups(parts: list[_Part], room: int, count: Callable[[str], int]) -> list[list[_Part]]:
    """Consecutive parts packed so that each reduce prompt fits (at least two per group)."""
    groups: list[list[_Part]] = [[]]
    size = 0
    for part in parts:
        n = count(part.text) + sum(count(p) for p in part.important) + 8
        if groups[-1] and size + n > room and len(groups[-1]) >= 2:
            groups.append([])
            size = 0
        groups[-1].append(part)
        size += n
    return groups


def _with_passages(summary: str, important: list[str]) -> str:
    if not important:
        return summary
    quoted = "\n\n".join(dict.fromkeys(important))
    return f"{summary}\n\nKey passages (verbatim):\n\n{quoted}"


def _counter(model: Model) -> Callable[[str], int]:
    return lambda text: len(model.encode(text))


# -- ask ------------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str
    mode: str  # "whole" (one prompt, cached) or "map-reduce"
    calls: int
    prefilled_tokens: int  # tokens read for this question


def _document_chat(model: Model, text: str, keep: int = 2) -> Any:
    """A conversation holding `text`, one of the model's `keep` most recent, so questions
    about the same document reuse its prefill. Kept on the model: freed with it."""
    from .session import ChatSession

    chats: OrderedDict[str, Any] = model.memo.setdefault("document_chats", OrderedDict())
    key = hashlib.sha256(text.encode()).hexdigest()
    if key in chats:
        chats.move_to_end(key)
    else:
        chats[key] = ChatSession(model, system=ASK_SYSTEM.format(text=text))
        while len(chats) > keep:
            chats.popitem(last=False)
    return chats[key]


def ask(
    model: Model,
    document: str | Path,
    question: str,
    *,
    params: SamplingParams | None = None,
    max_context: int | None = None,
    reply_tokens: int = SUMMARY_TOKENS,
    progress: ProgressFn | None = None,
) -> Answer:
    """Answer a question about a document (text as a str, or a file as a Path). One that fits is
    kept in a cached conversation: the next question about it reads only the question."""
    text = _load(document)
    params = (params or model.default_params).replace(max_tokens=reply_tokens)
    progress = progress or (lambda *_: None)
    count = _counter(model)
    budget = _context_budget(model, max_context)
    room = budget - PROMPT_OVERHEAD - params.max_tokens - count(question)
    if room <= 0:
        raise ValueError(f"A context of {budget} tokens leaves no room for a document.")
    if count(text) <= room:
        chat = _document_chat(model, text)
        chat.reset()
        chat.params = params
        chat.prefill_chunk = timely_chunk(model)
        stage = _Stage(progress, "answer", [chat.context_tokens + _budget(model, question, params)])

        def answer(tick: Callable[[int], None]) -> str:
            chat.prefill_progress = lambda done, _total: tick(done)
            pieces = []
            for chunk in chat.send(question):
                pieces.append(chunk.text)
                tick(chunk.prompt_tokens + chunk.generation_tokens)
            return "".join(pieces)

        try:
            reply = stage.run(answer)
        finally:
            chat.prefill_progress = None
        return Answer(reply.strip(), "whole", 1, chat.last_stats.prefilled_tokens)
    chunks = split_document(text, room, count)
    notes = [
        _Part(n)
        for n in _calls(
            model,
            params,
            progress,
            "read",
            [
                NOTES_PROMPT.format(question=question, index=i, total=len(chunks), text=c.text)
                for i, c in enumerate(chunks, start=1)
            ],
        )
    ]
    calls = len(chunks)
    level = 0
    while True:
        groups = _groups(notes, room, count)
        if len(groups) == 1:
            break
        level += 1
        prompts = [
            REDUCE_PROMPT.format(important="", text="\n\n".join(n.text for n in g)) for g in groups
        ]
        notes = [_Part(n) for n in _calls(model, params, progress, f"combine {level}", prompts)]
        calls += len(groups)
    body = "\n\n".join(n.text for n in notes)
    (reply,) = _calls(
        model, params, progress, "answer", [ANSWER_PROMPT.format(question=question, text=body)]
    )
    return Answer(reply, "map-reduce", calls + 1, sum(c.tokens for c in chunks))

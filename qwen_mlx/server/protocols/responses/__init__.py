"""OpenAI's Responses API: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`;
its request body (schemas.py), its translation into the shared request (translate.py),
its responses and event stream (encode.py), its store (store.py) and its routes
(routes.py).

A request (input as text or items, `instructions`, function tools, `function_call` and
`function_call_output` items, `text.format`, sampling) is translated into the shared
request every protocol speaks (`..prompt`) and prepared by the same `prepare_chat`. Replies
come back as output items (`message` with `output_text`, `function_call`), whole or as
the Responses event stream (`response.created`, `response.output_item.added`,
`response.output_text.delta`, ..., `response.completed` or `response.incomplete`).

Stateful where Ollama's is not: a stored response (`store`, true unless the request says
false) keeps its conversation and the exact token ids the model generated, and a request
naming it as `previous_response_id` continues that conversation with those ids spliced
into the prompt, so it meets the engine's pooled KV cache token for token and prefills
only what is new (`usage.input_tokens_details.cached_tokens` says how much it saved).
As with OpenAI, `instructions` are not carried over.

Stored responses live in this process's memory: each as the JSON that GET returns and its
conversation (serialized, with the reply ids as 32-bit arrays), nothing else of the
request. The store keeps the most recent ones up to `DEFAULT_STORED` of them and
`DEFAULT_STORED_BYTES` in all, dropping the oldest first. `metadata` is held to OpenAI's
limits (16 keys of at most 64 characters, values of at most 512), refused past them in
OpenAI's words.
"""

from __future__ import annotations

from ...protocol import Protocol
from .routes import install

PROTOCOL = Protocol(name="responses", prefixes=("/v1/responses",), install=install)

"""Tool results shaped for a model's context: JSON compacted losslessly, long text cut into pages.

Who gets what (README "Results shaped for a model"): a conversation on a model-facing MCP endpoint
(`/mcp`, `/servers/<name>/mcp`) gets shaped results unless it asks for raw ones (`?results=raw`, or its
key's `"results": "raw"`); programs (`/v1/calls`, `/v1/batches`, the Python client, which sends
`?results=raw`) get the backend's result whole. Shaping happens in the web process as the outcome
reaches the conversation: the stored outcome, the shared cache and batch results stay the raw truth.

What is shaped, per `tools/call` result that is not an error (`isError` results pass through whole):
- text parts that parse as a JSON object or array, rewritten in `result_format` (compaction.py);
- if the text parts are over `max_result_tokens` (cl100k tokens, tokens.py) they are paged (pages.py):
  the whole text is kept (result_pages.py), the answer carries page 1 and a second text part, the note,
  naming the handle and how to read page 2 with the broker's `read_result` tool. Several text parts are
  paged as one text joined by a line break (the parts' boundaries are not kept); images, audio, resource
  links and embedded resources pass through in the first answer, untouched and uncounted;
- `structuredContent` and `_meta` stay exactly as the backend sent them.

Cost when nothing is cut: a result whose text is at most `max_result_tokens` UTF-8 bytes is never
tokenized (a token is at least one byte), so a typical 1 KB result costs a length check; above that,
~10 MB/s of counting (2.5 ms for 25 KB, see tokens.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from broker.config import BrokerSettings
from broker.context import compaction, pages, tokens
from broker.context.env import results_env
from broker.context.names import broker_tool_name
from broker.context.result_pages import ResultPages

if TYPE_CHECKING:
    from broker.protocol.conversation import Conversation

log = logging.getLogger(__name__)

# The default limit on model-facing endpoints: 10,000 tokens (~40 KB of English or JSON), the size at which
# Claude Code starts warning about an MCP result (it cuts at 25,000 and the rest is lost); a typical tool
# result is a few hundred tokens and is never touched, a directory tree or a log is paged instead of
# taking a fifth of a 50K-token working context. A client may ask for more (`?max_result_tokens=`).
DEFAULT_MAX_RESULT_TOKENS = 10_000
NOTE_RESERVE_TOKENS = 100  # what a page leaves for its note (a note is ~70 tokens with its handle)
READ_TOOL = "read_result"  # the broker tool that returns a page (handle, page); named as listed to the client

Keep = Callable[[list[str]], str | None]  # stores a cut result's pages for the caller: the handle (None: over budget)


def default_max_result_tokens() -> int:
    """`MCP_BROKER_MAX_RESULT_TOKENS`, parsed and checked once at start (broker.context.env)."""
    return results_env().max_result_tokens


@dataclass(frozen=True)
class ResultsChoice:
    """What a client asked of its results (endpoint query string or key); None = it did not say."""

    mode: str | None = None  # shaped | raw
    result_format: str | None = None  # raw | compact | toon, over the servers' setting
    max_result_tokens: int | None = None  # over the servers' setting (0 = never cut)

    def shaped(self, default: str = "shaped") -> bool:
        return (self.mode or default) == "shaped"


@dataclass(frozen=True)
class Policy:
    """How one tool's result is shaped for one caller."""

    max_result_tokens: int  # 0 = never cut
    result_format: str

    @property
    def inert(self) -> bool:
        return self.max_result_tokens == 0 and self.result_format == "raw"


def policy(settings: BrokerSettings, tool: str | None, choice: ResultsChoice) -> Policy:
    """The client's choice, else the server's setting for the tool (or its `*`), else the defaults."""
    def per_tool(table: dict[str, Any]) -> Any:
        return table.get(tool, table.get("*")) if tool is not None else table.get("*")

    limit = choice.max_result_tokens
    if limit is None:
        limit = per_tool(settings.max_result_tokens)
    if limit is None:
        limit = default_max_result_tokens()
    result_format = choice.result_format or per_tool(settings.result_format) or "raw"
    return Policy(int(limit), str(result_format))


def note(handle: str, number: int, count: int, shown_tokens: int, read_tool: str) -> str:
    """What ends a page: where the reader is, and the exact call that reads the next page."""
    if number >= count:
        return f"[End of result {handle}: page {number} of {count}.]"
    call = json.dumps({"handle": handle, "page": number + 1})
    return (f"[Result cut for length: page {number} of {count} ({shown_tokens} tokens shown). Nothing is lost: "
            f"call the tool {read_tool} with {call} for the next page.]")


def page_result(handle: str, number: int, count: int, text: str, read_tool: str) -> dict[str, Any]:
    """The answer of the page tool: the page's text, then its note (the texts of the pages concatenated are
    the whole result)."""
    return {"content": [{"type": "text", "text": text},
                        {"type": "text", "text": note(handle, number, count, tokens.count(text), read_tool)}]}


def _is_text(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)


def shape(result: dict[str, Any], rule: Policy, keep: Keep, read_tool: str = READ_TOOL) -> dict[str, Any]:
    """`result` (a `tools/call` result) shaped by `rule`; `keep` stores the pages when it is cut."""
    content = result.get("content")
    if rule.inert or result.get("isError") or not isinstance(content, list):
        return result
    texts = [i for i, part in enumerate(content) if _is_text(part)]
    if not texts:
        return result
    parts = list(content)
    if rule.result_format != "raw":
        for i in texts:
            parts[i] = {**parts[i], "text": compaction.rewrite(parts[i]["text"], rule.result_format)}
    limit = rule.max_result_tokens
    whole = "\n".join(parts[i]["text"] for i in texts)
    if limit > 0 and tokens.over(whole, limit):
        cut = pages.split(whole, limit - NOTE_RESERVE_TOKENS)
        handle = keep(cut)
        first, dropped = texts[0], set(texts[1:])
        head = {**parts[first], "text": cut[0]}
        shown = tokens.count(cut[0])
        tail = {"type": "text", "text": note(handle, 1, len(cut), shown, read_tool) if handle is not None else
                f"[Result cut for length: page 1 of {len(cut)} ({shown} tokens shown). The rest could not be kept: "
                "this key's kept results are over their size limit; ask for less, or call again later.]"}
        parts = [item for i, part in enumerate(parts) if i not in dropped
                 for item in ((head, tail) if i == first else (part,))]
    elif parts == content:
        return result
    return {**result, "content": parts}


def choice_of(conversation: Conversation) -> ResultsChoice:
    """The conversation's choice (its endpoint's query string) over its key's (keys file)."""
    asked, principal = conversation.results_choice, conversation.principal
    return ResultsChoice(asked.mode or principal.results, asked.result_format or principal.result_format,
                         asked.max_result_tokens)


def gets_shaped_results(conversation: Conversation) -> bool:
    """Whether `tools/list` offers the page tool: the conversation's tool results are shaped, and its key may
    use some tool of the endpoint (a key that may use nothing there is shown nothing)."""
    if not choice_of(conversation).shaped():
        return False
    principal, catalog = conversation.principal, conversation.services.catalog
    if principal.allow == ("*",):
        return True
    separator = conversation.services.config.separator
    documents = catalog.documents
    servers = [conversation.scope] if conversation.scope else list(documents)
    return any(principal.may(server, str(tool.get("name", "")), separator)
               for server in servers for tool in documents.get(server, {}).get("tools", []))


def for_conversation(conversation: Conversation, server: str, tool: str | None,
                     result: dict[str, Any]) -> dict[str, Any]:
    """A backend's `tools/call` result as this conversation receives it: shaped on a model-facing endpoint
    unless the client or its key asked for raw results."""
    choice = choice_of(conversation)
    spec = conversation.services.config.servers.get(server)
    if not choice.shaped() or spec is None:
        return result
    rule = policy(spec.settings, tool, choice)
    if rule.inert:
        return result
    store = ResultPages(conversation.services.redis)
    read_tool = read_tool_name(conversation.services.config.separator)
    try:
        return shape(result, rule, lambda cut: store.keep(conversation.principal.id, cut), read_tool)
    except (ValueError, redis.RedisError) as err:  # e.g. a lone surrogate Redis cannot store: the answer still goes
        log.warning("result of %s/%s passed unshaped: %s", server, tool, err)
        return result
    except Exception:  # a shaping bug must never cost the client its answer: it gets the raw result
        log.warning("result of %s/%s passed unshaped: shaping failed", server, tool, exc_info=True)
        return result


def read_tool_name(separator: str) -> str:
    """How the page tool is listed (the broker's own namespace, broker.context.names)."""
    return broker_tool_name(READ_TOOL, separator)

"""Coze providers: bot chat (chat v3) and workflows, over one shared, pooled HTTP client per token.

One module per concern: ``clients`` (the shared clients, the conversation turns and the
cancel of an abandoned chat), ``chat`` (the bot chat service and its options), ``submit``
(answering a bot's tool calls: submit_tool_outputs and its continuation), ``parts`` (images and
files as object_string content, bytes uploaded first), ``workflows`` (the workflow service),
``events`` (what Coze's stream events mean, as the gateway's provider events) and ``errors``
(Coze's codes and failures as the gateway's typed errors).

cozepy's ``AsyncCoze`` sends the chat request (body, auth, JSON error answers), but
every stream body, chat and workflow, is read with our own SSE reader on the same
client. cozepy's reader splits lines at U+2028, U+0085 and other separators that
JSON carries raw inside strings, fails on heartbeat comments, spends most of the
CPU per token on per-line work and pydantic, and swallows the workflow ``Done``
event, without which a stream that was cut cleanly cannot be told from one that finished.
"""

from __future__ import annotations

import logging
import warnings

# cozepy imports authlib.jose, which warns at every start; the gateway uses no JWT auth.
# authlib installs an "always" filter for its warnings on import, so ours must come after it.
# Done here, before any module of the package imports cozepy: a package's __init__ runs first.
import authlib.deprecate  # noqa: F401

warnings.filterwarnings("ignore", message=r"authlib\.jose module is deprecated")
import cozepy  # noqa: E402, F401

# cozepy warns once per unknown enum value (e.g. message type "knowledge", which
# Coze's own docs use); the gateway ignores such messages, so the warning is noise.
warnings.filterwarnings("ignore", message=r"Unknown \w+ value", category=UserWarning, module=r"cozepy\.")

# cozepy prints through a handler of its own, its WARNINGs quote whatever Coze answered,
# unbounded and unscrubbed (a proxy echoing the token, a 1 MB error page), and at DEBUG it
# logs every event line (message contents). The gateway logs each such failure itself,
# scrubbed and bounded (server/errors.py), so cozepy's records go through the application's
# handlers, and only from ERROR up.
_COZEPY_LOGGER = logging.getLogger("cozepy")
_COZEPY_LOGGER.handlers.clear()
_COZEPY_LOGGER.propagate = True
_COZEPY_LOGGER.setLevel(logging.ERROR)

from providers.coze.chat import CozeChatService  # noqa: E402
from providers.coze.clients import CozeClients  # noqa: E402
from providers.coze.errors import LOG_ID_HEADER, PROVIDER, coze_error  # noqa: E402
from providers.coze.workflows import CozeWorkflowService  # noqa: E402

__all__ = ["LOG_ID_HEADER", "PROVIDER", "CozeChatService", "CozeClients", "CozeWorkflowService", "coze_error"]
from providers.coze.chatflow import CozeChatflowService  # noqa: E402

__all__ += ["CozeChatflowService"]

"""``python -m clients.chat``: the terminal chat client (full-screen, or ``--plain`` lines).

Modules, UI-free first (each is tested without a terminal):

- :mod:`~clients.chat.ids` — names, DM ids, message limits as the API defines them;
- :mod:`~clients.chat.commands` — the input language (``/join``, ``/msg`` ...) parsed to values;
- :mod:`~clients.chat.complete` — Tab candidates and the pickers' fuzzy filter;
- :mod:`~clients.chat.colors`, :mod:`~clients.chat.mentions` — colour per user, ``@name``;
- :mod:`~clients.chat.outbox` — the user's unacknowledged messages, in order per conversation;
- :mod:`~clients.chat.model` — conversations, unread counts, read markers, holes, presence;
- :mod:`~clients.chat.status` — the connection and the leader change behind a failover;
- :mod:`~clients.chat.render` — the panes as wrapped lines of styled text;
- :mod:`~clients.chat.ports` — what the engine talks to: the client library, a view;
- :mod:`~clients.chat.engine` — commands, sends, history, read markers, session events;
- :mod:`~clients.chat.link` — connection events, and the leader change behind a failover;

and the terminal layer: :mod:`~clients.chat.login` (login / register prompts),
:mod:`~clients.chat.tui` and :mod:`~clients.chat.picker` (the full screen, prompt_toolkit),
:mod:`~clients.chat.plain` (line mode), :mod:`~clients.chat.options` (flags) and
:mod:`~clients.chat.app` (start-up, terminal hygiene, ``main``).

Why this split: the hard parts of a chat client — ordering, failures, unread state — are the
same with or without a screen, so they live where a test can reach them in milliseconds, and
the prompt_toolkit layer only draws and maps keys.
"""

from clients.chat.app import main, run_line_mode, run_tui

__all__ = ["main", "run_line_mode", "run_tui"]

"""The login / register screen shown before the full-screen chat.

Why plain prompts (``PromptSession``) and not a form: they work in any terminal, a screen
reader reads them line by line, the password is not echoed (``is_password``), and a test drives
them through the same pipe input as the chat. The flow is "user, password, then log in or
register"; a refused attempt says why (wrong password, name taken, cluster unreachable) and
asks again. Ctrl-C or Ctrl-D leaves without a traceback.
"""

from __future__ import annotations

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output

from clients import (
    Account,
    AlreadyExists,
    AsyncChatClient,
    ChatError,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
)
from clients.chat.ids import MIN_PASSWORD_BYTES, is_name

ATTEMPTS = 5


class LoginCancelled(Exception):
    """The user left the login screen (Ctrl-C, Ctrl-D, or too many failed attempts)."""


async def login_screen(
    client: AsyncChatClient,
    *,
    default_user: str = "",
    input: Input | None = None,
    output: Output | None = None,
) -> Account:
    """Ask for credentials until a login succeeds; returns the account."""
    session: PromptSession[str] = PromptSession(input=input, output=output)

    def say(text: str, style: str = "") -> None:
        print_formatted_text(FormattedText([(style, text)]), output=output)

    say("raftchat: log in, or register a new account (Ctrl-C leaves)", "bold")
    user = default_user
    for _ in range(ATTEMPTS):
        try:
            user = (await session.prompt_async("user: ", default=user)).strip().lower()
            if not is_name(user):
                say("a user name is 1-32 of a-z, 0-9, _ and -", "fg:ansired")
                continue
            password = await session.prompt_async("password: ", is_password=True)
            choice = await session.prompt_async("[l]og in (Enter) or [r]egister? ")
            if choice.strip().lower().startswith("r"):
                again = await session.prompt_async("password again: ", is_password=True)
                if again != password:
                    say("the passwords differ", "fg:ansired")
                    continue
                if len(password.encode()) < MIN_PASSWORD_BYTES:
                    say(f"a password has at least {MIN_PASSWORD_BYTES} bytes", "fg:ansired")
                    continue
                say("registering ...")
                await client.register(user, password)
            say("logging in ...")
            return await client.login(user, password)
        except (KeyboardInterrupt, EOFError):
            raise LoginCancelled from None
        except Unauthenticated:
            say("wrong user or password", "fg:ansired")
        except AlreadyExists:
            say(f"the name {user!r} is taken: log in, or pick another", "fg:ansired")
        except InvalidArgument as exc:
            say(exc.details or str(exc), "fg:ansired")
        except Unavailable as exc:
            say(f"the cluster does not answer ({exc.details}); try again", "fg:ansired")
        except ChatError as exc:
            say(str(exc), "fg:ansired")
    raise LoginCancelled("too many failed attempts")

"""An Ollama Modelfile for an exported GGUF: a Go TEMPLATE, stop parameters and SYSTEM that
reproduce the run's chat template for the conversations it trains on (system, user and
assistant turns; no tools).

The template is not translated from Jinja: the run's template is rendered for probe
conversations, the text around each turn is read off, and the Go template is built from
those pieces. Templates of the ChatML family (Qwen, SmolLM) are supported; the pieces are
checked by rendering probes both ways before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError

MARK = "\x00{}\x00"  # a sentinel that no template writes


@dataclass
class TurnPieces:
    """The text a chat template writes around each turn."""

    system_open: str
    user_open: str
    assistant_open: str
    close: str
    generation: str  # after the last user turn, where the model writes
    default_system: str  # what the template writes as the system turn when none is given


def render(tokenizer: Any, messages: list[dict[str, str]], thinking: bool) -> str:
    """The run's chat template on ``messages`` with the generation prompt."""
    from tunelab.data.encode import render_chat

    return render_chat(tokenizer, messages, add_generation_prompt=True, thinking=thinking)


def turn_pieces(tokenizer: Any, thinking: bool) -> TurnPieces:
    """Read the pieces off renderings of probe conversations (ChatML family only)."""
    system, user, reply, again = (MARK.format(n) for n in range(4))
    full = render(
        tokenizer,
        [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": again},
        ],
        thinking,
    )
    before_system, rest = full.split(system)
    after_system, rest = rest.split(user)
    after_user, rest = rest.split(reply)
    after_reply, generation_tail = rest.split(again)
    # ChatML: every turn opens the same way but for its role's name
    user_open = before_system.replace("system", "user")
    assistant_open = before_system.replace("system", "assistant")
    close = after_system[: -len(user_open)] if after_system.endswith(user_open) else ""
    consistent = (
        "system" in before_system
        and close
        and after_user == close + assistant_open
        and after_reply == close + user_open
        and generation_tail.startswith(close)
    )
    if not consistent:
        raise _unsupported()
    pieces = TurnPieces(
        system_open=before_system,
        user_open=user_open,
        assistant_open=assistant_open,
        close=close,
        generation=generation_tail[len(close) :],
        default_system="",
    )
    alone = render(tokenizer, [{"role": "user", "content": user}], thinking)
    head = alone.split(user)[0]
    if head != pieces.user_open:
        if not (head.startswith(pieces.system_open) and head.endswith(close + pieces.user_open)):
            raise _unsupported()
        pieces.default_system = head[len(pieces.system_open) : -len(close + pieces.user_open)]
    return pieces


def _unsupported() -> TunelabError:
    return TunelabError(
        "Modelfile: the run's chat template does not write turns as one opening, the content "
        "and one closing (the ChatML family: Qwen, SmolLM); the GGUF carries the template "
        "itself: use --format gguf and llama.cpp, or write the TEMPLATE by hand"
    )


def go_template(pieces: TurnPieces) -> str:
    """Ollama's TEMPLATE: .System is the system turn, .Messages the other turns."""
    close = _go_text(pieces.close)
    return (
        "{{ if .System }}"
        + _go_text(pieces.system_open)
        + "{{ .System }}"
        + close
        + "{{ end }}"
        + "{{ range .Messages }}"
        + '{{ if eq .Role "user" }}'
        + _go_text(pieces.user_open)
        + "{{ .Content }}"
        + close
        + '{{ else if eq .Role "assistant" }}'
        + _go_text(pieces.assistant_open)
        + "{{ .Content }}"
        + close
        + "{{ end }}"
        + "{{ end }}"
        + _go_text(pieces.generation)
    )


def _go_text(text: str) -> str:
    """Literal text inside a Go template (a stray ``{{`` would start an action)."""
    return text.replace("{{", '{{ "{{" }}')


def modelfile(gguf_name: str, pieces: TurnPieces, stops: list[str]) -> str:
    """The Modelfile beside ``gguf_name``."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template(pieces)}"""']
    lines += [f'PARAMETER stop "{_quoted(stop)}"' for stop in stops]
    if pieces.default_system:
        lines.append(f'SYSTEM """{pieces.default_system}"""')
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def stop_strings(tokenizer: Any, pieces: TurnPieces) -> list[str]:
    """The end of a turn and the end-of-text token: where Ollama must stop."""
    stops = [pieces.close.strip()] if pieces.close.strip() else []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops

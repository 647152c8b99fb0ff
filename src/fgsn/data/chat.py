"""Chat templating: every prompt reaches the model exactly as at evaluation time."""

from __future__ import annotations

from fgsn.errors import InputError


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_chat(tokenizer, prompt: str, system: str | None = None, use_chat_template: bool = True,
                suffix: str = "") -> str:
    """The text the model sees for `prompt`: the chat template with a generation prompt, or the
    raw prompt when `use_chat_template` is False. A `suffix` is appended to the user turn
    (Self-Reminder and similar inference-time defences)."""
    user = prompt + suffix
    if not use_chat_template:
        return (system + "\n\n" + user) if system else user
    if not has_chat_template(tokenizer):
        raise InputError(
            f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template; "
            "add one to tokenizer_config.json, or pass --no-use-chat-template to feed raw prompts"
        )
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_all(tokenizer, prompts: list[str], **kw) -> list[str]:
    return [render_chat(tokenizer, p, **kw) for p in prompts]

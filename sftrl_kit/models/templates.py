"""The chat template SFT trains with when its loss is on assistant tokens only.

TRL's SFTTrainer finds the assistant tokens of a conversation through `{% generation %}`
marks in the chat template (transformers' `return_assistant_tokens_mask`). Most released
templates have none; TRL 1.16 swaps in a marked copy for the templates it knows
(trl.chat_template_utils.get_training_chat_template: Qwen2.5-VL, Llama 3 text, SmolVLM ...),
and raises for any other. Llama-3.2-Vision's (Mllama, the paper's backbone) is not among
them, so the kit marks it itself (`LLAMA_3_2_VISION_TRAINING_CHAT_TEMPLATE`): the original,
with each assistant turn's text and end-of-turn token wrapped in generation marks, which
changes no rendered character. `training_chat_template` picks the template for a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# meta-llama/Llama-3.2-11B-Vision-Instruct's chat template, character for character as the
# model's chat_template.json held it when copied into johnmai-dev/Jinja
# (Tests/Templates/VisionTests.swift, "llama3_2visionChatTemplate") and into NVIDIA NeMo's
# MLlamaTemplateConfig (both copies agree). Later revisions of the model's repository also let a
# system message come with images; `training_chat_template` marks those as well, checking that
# the marked copy renders the run's conversations as they do.
LLAMA_3_2_VISION_CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- if custom_tools is defined %}\n"
    "    {%- set tools = custom_tools %}\n"
    "{%- endif %}\n"
    "{%- if not tools_in_user_message is defined %}\n"
    "    {%- set tools_in_user_message = true %}\n"
    "{%- endif %}\n"
    "{%- if not date_string is defined %}\n"
    "    {%- if strftime_now is defined %}\n"
    '        {%- set date_string = strftime_now("%d %b %Y") %}\n'
    "    {%- else %}\n"
    '        {%- set date_string = "26 Jul 2024" %}\n'
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- if not tools is defined %}\n"
    "    {%- set tools = none %}\n"
    "{%- endif %}\n"
    "\n"
    "{#- This block extracts the system message, so we can slot it into the right place. #}\n"
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content']|trim %}\n"
    "    {%- set messages = messages[1:] %}\n"
    "{%- else %}\n"
    '    {%- set system_message = "" %}\n'
    "{%- endif %}\n"
    "\n"
    "{#- Find out if there are any images #}\n"
    "{% set image_ns = namespace(has_images=false) %}      \n"
    "{%- for message in messages %}\n"
    "    {%- for content in message['content'] %}\n"
    "        {%- if content['type'] == 'image' %}\n"
    "            {%- set image_ns.has_images = true %}\n"
    "        {%- endif %}\n"
    "    {%- endfor %}\n"
    "{%- endfor %}\n"
    "\n"
    "{#- Error out if there are images and system message #}\n"
    '{%- if image_ns.has_images and not system_message == "" %}\n'
    '    {{- raise_exception("Prompting with images is incompatible with system messages.") }}\n'
    "{%- endif %}\n"
    "\n"
    "{#- System message if there are no images #}\n"
    "{%- if not image_ns.has_images %}\n"
    '    {{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    "    {%- if tools is not none %}\n"
    '        {{- "Environment: ipython\\n" }}\n'
    "    {%- endif %}\n"
    '    {{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '    {{- "Today Date: " + date_string + "\\n\\n" }}\n'
    "    {%- if tools is not none and not tools_in_user_message %}\n"
    '        {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}\n'
    '        {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
    '        {{- "Do not use variables.\\n\\n" }}\n'
    "        {%- for t in tools %}\n"
    "            {{- t | tojson(indent=4) }}\n"
    '            {{- "\\n\\n" }}\n'
    "        {%- endfor %}\n"
    "    {%- endif %}\n"
    "    {{- system_message }}\n"
    '    {{- "<|eot_id|>" }}\n'
    "{%- endif %}\n"
    "\n"
    "{#- Custom tools are passed in a user message with some extra guidance #}\n"
    "{%- if tools_in_user_message and not tools is none %}\n"
    "    {#- Extract the first user message so we can plug it in here #}\n"
    "    {%- if messages | length != 0 %}\n"
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    "        {%- set messages = messages[1:] %}\n"
    "    {%- else %}\n"
    '        {{- raise_exception("Cannot put tools in the first user message when there\'s no first user message!") }}\n'
    "{%- endif %}\n"
    "    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n"
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
    '    {{- "Do not use variables.\\n\\n" }}\n'
    "    {%- for t in tools %}\n"
    "        {{- t | tojson(indent=4) }}\n"
    '        {{- "\\n\\n" }}\n'
    "    {%- endfor %}\n"
    '    {{- first_user_message + "<|eot_id|>"}}\n'
    "{%- endif %}\n"
    "\n"
    "{%- for message in messages %}\n"
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "        {%- if message['content'] is string %}\n"
    "            {{- message['content'] }}\n"
    "        {%- else %}\n"
    "            {%- for content in message['content'] %}\n"
    "                {%- if content['type'] == 'image' %}\n"
    "                    {{- '<|image|>' }}\n"
    "                {%- elif content['type'] == 'text' %}\n"
    "                    {{- content['text'] }}\n"
    "                {%- endif %}\n"
    "            {%- endfor %}\n"
    "        {%- endif %}\n"
    "        {{- '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n"
    "        {%- if not message.tool_calls|length == 1 %}\n"
    '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
    "        {%- endif %}\n"
    "        {%- set tool_call = message.tool_calls[0].function %}\n"
    "        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n"
    "        {{- '\"parameters\": ' }}\n"
    "        {{- tool_call.arguments | tojson }}\n"
    '        {{- "}" }}\n'
    '        {{- "<|eot_id|>" }}\n'
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
    "        {%- if message.content is mapping or message.content is iterable %}\n"
    "            {{- message.content | tojson }}\n"
    "        {%- else %}\n"
    "            {{- message.content }}\n"
    "        {%- endif %}\n"
    '        {{- "<|eot_id|>" }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)

# The edits that mark assistant output in Llama-3.2-Vision's template: each (anchor, replacement)
# must occur exactly once. A turn's text and end-of-turn token are captured once ({% set %} block)
# and written inside {% generation %} for an assistant turn, as they are for any other; a tool
# call's JSON and end-of-turn token are wrapped likewise. The role headers stay outside.
LLAMA_3_2_VISION_MARKS = (
    (
        "        {%- if message['content'] is string %}\n",
        "        {%- set turn_text %}\n        {%- if message['content'] is string %}\n",
    ),
    (
        "        {{- '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n",
        "        {{- '<|eot_id|>' }}\n"
        "        {%- endset %}\n"
        "        {%- if message['role'] == 'assistant' %}\n"
        "            {%- generation %}{{- turn_text }}{%- endgeneration %}\n"
        "        {%- else %}\n"
        "            {{- turn_text }}\n"
        "        {%- endif %}\n"
        "    {%- elif 'tool_calls' in message %}\n",
    ),
    (
        "        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n",
        "        {%- generation %}\n        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n",
    ),
    (
        '        {{- "<|eot_id|>" }}\n    {%- elif message.role == "tool" or message.role == "ipython" %}\n',
        '        {{- "<|eot_id|>" }}\n'
        "        {%- endgeneration %}\n"
        '    {%- elif message.role == "tool" or message.role == "ipython" %}\n',
    ),
)


def with_generation_marks(template: str, marks: Sequence[tuple[str, str]] = LLAMA_3_2_VISION_MARKS) -> str | None:
    """`template` with the `marks` edits made, or None when an anchor is not in it exactly once
    (another template, or a revision whose message loop changed)."""
    for anchor, replacement in marks:
        if template.count(anchor) != 1:
            return None
        template = template.replace(anchor, replacement)
    return template


LLAMA_3_2_VISION_TRAINING_CHAT_TEMPLATE = with_generation_marks(LLAMA_3_2_VISION_CHAT_TEMPLATE)
"""Llama-3.2-Vision's own template with generation marks: the same text for every conversation
(tests/test_backbones.py renders the kit's SFT records through both)."""


def training_chat_template(processing_class: Any, conversations: Iterable[list[dict[str, Any]]]) -> str:
    """The chat template, with generation marks, that SFT on assistant tokens only renders
    `conversations` (the run's, as TRL renders them) with: the model's own when it has marks;
    TRL's training copy when TRL knows the template; the kit's marked copy of a Llama-3.2-Vision
    template. Every one renders the text the model's own template does; a marked copy of a
    revision other than LLAMA_3_2_VISION_CHAT_TEMPLATE is used only after checking that on each
    conversation. Otherwise a ValueError naming the fixes."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    own = processing_class.chat_template
    own = own["default"] if isinstance(own, dict) else own  # a template shipped as named variants
    if not own:
        raise ValueError("the model has no chat template: SFT on conversations needs one (save it with the checkpoint)")
    if has_generation_markers(own):
        return own
    try:
        return get_training_chat_template(processing_class)
    except ValueError:
        pass  # a template TRL does not know
    marked = with_generation_marks(own)
    if marked is None:
        raise ValueError(
            "loss_on='assistant' needs a chat template that marks the assistant's tokens ({% generation %} ... "
            "{% endgeneration %}); this model's has no marks, TRL has no marked copy of it, and the kit marks "
            "Llama-3.2-Vision's only. Train with loss_on='all', or save a chat template with the marks in the "
            "model's folder (its text unchanged: see sftrl_kit.models.templates)"
        )
    if own != LLAMA_3_2_VISION_CHAT_TEMPLATE:
        index = first_rendering_difference(processing_class, conversations, own, marked)
        if index is not None:
            raise ValueError(
                f"the kit's marked copy of this model's Llama-3.2-Vision chat template renders conversation {index} "
                "of the dataset differently from the template itself, so its assistant tokens cannot be marked: "
                "train with loss_on='all', or save a chat template with {% generation %} marks in the model's folder"
            )
    return marked


def first_rendering_difference(
    processing_class: Any, conversations: Iterable[list[dict[str, Any]]], template: str, other: str
) -> int | None:
    """The index of the first conversation that `other` renders differently from `template`
    (or fails to render), or None when every one renders alike."""
    from jinja2 import TemplateError

    for index, messages in enumerate(conversations):
        expected = processing_class.apply_chat_template(messages, tokenize=False, chat_template=template)
        try:
            rendered = processing_class.apply_chat_template(messages, tokenize=False, chat_template=other)
        except TemplateError:
            return index
        if rendered != expected:
            return index
    return None

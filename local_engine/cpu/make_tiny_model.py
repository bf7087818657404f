#!/usr/bin/env python3
"""Build a tiny, random-weight Mixtral (MoE) model plus tokenizer for local vLLM tests.

Usage: python make_tiny_model.py OUT_DIR [--force]

Run it with the vLLM venv's python (it needs torch, transformers and tokenizers).
Everything is seeded, so two builds produce identical files. No network access is needed.

Written to OUT_DIR:
  config.json, generation_config.json, model.safetensors   MixtralForCausalLM, 2 layers, 4 experts, top-2
  tokenizer.json, tokenizer_config.json                    byte-level BPE over printable ASCII + \\t \\n,
                                                           Mistral control tokens, Jinja chat template
  escalade-tiny.json                                       special-token ids for tests (never hard-code them)

The model's output is random text by design; tests force tool calls / reasoning with
structured outputs plus a logit_bias on the ids listed in escalade-tiny.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import string
import sys
import tempfile

SEED = 1234
SERVED_MODEL_NAME = "tiny-mixtral"
VOCAB_SIZE = 1024
MAX_POSITIONS = 4096

# Special tokens first, so they get the lowest ids (in this order).
SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[ARGS]",
    "[CALL_ID]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[THINK]",
    "[/THINK]",
    "<pad>",
]
# The ids a test must push with logit_bias so the model emits the real control tokens
# (the Mistral tool/reasoning parsers detect them by token id when streaming).
FORCING_TOKENS = ["[TOOL_CALLS]", "[ARGS]", "[THINK]", "[/THINK]"]

ALLOWED_CHARS = set(string.printable) - {"\r", "\x0b", "\x0c"}  # printable ASCII + space, \t, \n

# Mistral-style chat template. Renders system / user / assistant (with tool calls and
# reasoning) / tool messages, the available tools, and `effort=<reasoning_effort>` when
# vLLM passes reasoning_effort as a template kwarg.
CHAT_TEMPLATE = r"""{%- macro text(content) -%}
{%- if content is none -%}
{%- elif content is string -%}{{ content }}
{%- else -%}{%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(system='', last_user=-1) -%}
{%- for m in messages -%}
{%- if m.role == 'system' or m.role == 'developer' -%}
{%- set ns.system = ns.system + (('\n\n') if ns.system else '') + text(m.content) -%}
{%- elif m.role == 'user' -%}
{%- set ns.last_user = loop.index0 -%}
{%- endif -%}
{%- endfor -%}
{{- bos_token -}}
{%- if ns.system -%}[SYSTEM_PROMPT]{{ ns.system }}[/SYSTEM_PROMPT]{%- endif -%}
{%- if reasoning_effort is defined and reasoning_effort is not none -%}[SYSTEM_PROMPT]effort={{ reasoning_effort }}[/SYSTEM_PROMPT]{%- endif -%}
{%- for m in messages -%}
{%- if m.role == 'user' -%}
{%- if tools and loop.index0 == ns.last_user -%}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif -%}
[INST]{{ text(m.content) }}[/INST]
{%- elif m.role == 'assistant' -%}
{%- set thought = m.reasoning if m.reasoning is defined and m.reasoning else (m.reasoning_content if m.reasoning_content is defined and m.reasoning_content else '') -%}
{%- if thought -%}[THINK]{{ thought }}[/THINK]{%- endif -%}
{{- text(m.content) -}}
{%- if m.tool_calls is defined and m.tool_calls -%}
{%- for tc in m.tool_calls -%}
{%- set fn = tc.function if tc.function is defined else tc -%}
[TOOL_CALLS]{{ fn.name }}[ARGS]{%- if fn.arguments is string -%}{{ fn.arguments }}{%- else -%}{{ fn.arguments | tojson }}{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- eos_token -}}
{%- elif m.role == 'tool' -%}
[TOOL_RESULTS]{%- if m.tool_call_id is defined and m.tool_call_id -%}{{ m.tool_call_id }}[CALL_ID]{%- endif -%}{{ text(m.content) }}[/TOOL_RESULTS]
{%- endif -%}
{%- endfor -%}"""


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable unicode char mapping used by byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def training_corpus() -> list[str]:
    """Deterministic ASCII-only corpus: prose, chat-ish phrases, JSON tool calls, code."""
    rng = random.Random(SEED)
    words = (
        "the of and to in is it you that he was for on are with as I his they be at one have this "
        "from or had by hot word but what some we can out other were all there when up use your how "
        "said an each she which do their time if will way about many then them write would like so "
        "these her long make thing see him two has look more day could go come did number sound no "
        "most people my over know water than call first who may down side been now find any new work "
        "part take get place made live where after back little only round man year came show every good "
        "me give our under name very through just form sentence great think say help low line differ "
        "turn cause much mean before move right boy old too same tell does set three want air well also "
        "play small end put home read hand port large spell add even land here must big high such follow "
        "act why ask men change went light kind off need house picture try us again animal point mother "
        "world near build self earth father head stand own page should country found answer school grow "
        "study still learn plant cover food sun four between state keep eye never last let thought city "
        "tree cross farm hard start might story saw far sea draw left late run while press close night "
        "real life few north weather sunny rain cloudy wind today tomorrow model token request response "
        "stream tool function call result error value gateway engine server client local test check "
        "please thanks hello world question reason step answer because therefore Paris London Tokyo Berlin"
    ).split()
    keys = ["city", "unit", "name", "arguments", "id", "type", "content", "role", "query", "limit", "location"]
    tools = ["get_weather", "search", "lookup", "get_time", "send_email", "read_file", "add"]
    code = [
        "def main():\n\treturn 0\n",
        "for i in range(10):\n\tprint(i)\n",
        "if x == 1:\n\ty = x + 2\nelse:\n\ty = None\n",
        "import json\ndata = json.loads(text)\n",
        "class Foo(object):\n\tpass\n",
        '{"a": [1, 2, 3], "b": {"c": true, "d": null}}\n',
    ]
    lines: list[str] = []
    for _ in range(4000):
        n = rng.randint(4, 16)
        sent = " ".join(rng.choice(words) for _ in range(n))
        sent = sent[0].upper() + sent[1:] + rng.choice([".", ".", "?", "!", ",", ":", ";"])
        lines.append(sent)
    for _ in range(1500):
        args = {k: rng.choice(words) for k in rng.sample(keys, rng.randint(1, 3))}
        if rng.random() < 0.3:
            args["n"] = rng.randint(0, 1000)
        lines.append(rng.choice(tools) + json.dumps(args, separators=(",", ":")))
        lines.append(json.dumps(args))
    for _ in range(500):
        lines.append(rng.choice(code))
        lines.append(
            f"{rng.randint(0, 99999)} {rng.random():.4f} {rng.randint(1, 12)}/{rng.randint(1, 28)}/20{rng.randint(10, 40)}"
        )
    lines.append("".join(sorted(ALLOWED_CHARS)))
    for line in lines:
        bad = set(line) - ALLOWED_CHARS
        assert not bad, f"non-ASCII in corpus: {bad!r}"
    return lines


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    b2u = bytes_to_unicode()
    alphabet = sorted(b2u[ord(c)] for c in ALLOWED_CHARS)

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    # Completions prompts get a BOS like Mistral models; chat prompts carry it via the template.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )

    vocab = tok.get_vocab()
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {len(vocab)} tokens, expected {VOCAB_SIZE}; enlarge the corpus")
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i, (name, tok.token_to_id(name))
    # Every non-special token must decode to non-empty, valid text (no partial UTF-8).
    for tid in range(len(SPECIAL_TOKENS), VOCAB_SIZE):
        s = tok.decode([tid], skip_special_tokens=False)
        if not s or "\ufffd" in s or set(s) - ALLOWED_CHARS:
            raise SystemExit(f"token {tid} decodes to {s!r}")
    return tok


def write_tokenizer_files(tok, out: str) -> None:
    tok.save(os.path.join(out, "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in ("<s>", "</s>", "<unk>", "<pad>")],
        "model_max_length": MAX_POSITIONS,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump(
            {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens")},
            f,
            indent=2,
        )
        f.write("\n")


def build_model(tok, out: str) -> int:
    import torch
    from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM

    torch.manual_seed(SEED)
    config = MixtralConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=MAX_POSITIONS,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tok.token_to_id("<s>"),
        eos_token_id=tok.token_to_id("</s>"),
        pad_token_id=tok.token_to_id("<pad>"),
        initializer_range=0.05,
    )
    model = MixtralForCausalLM(config).to(torch.float32).eval()
    # Re-draw every weight from our own seeded generator, so the result does not depend on
    # transformers' init order or meta-device tricks.
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * config.initializer_range)
    model.config.architectures = ["MixtralForCausalLM"]
    # Files go in first; the caller moves model.safetensors last (its presence marks completion).
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(out)
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        raise SystemExit(f"save_pretrained did not write a single model.safetensors: {sorted(os.listdir(out))}")
    return sum(p.numel() for p in model.parameters())


def check_template(out: str, ids: dict[str, int]) -> None:
    """Load the files back with transformers and render a chat covering every role."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(out)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "abcDEF123",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "abcDEF123", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "Thanks"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    text = {e: t.apply_chat_template(msgs, tools=tools, tokenize=False, reasoning_effort=e) for e in ("none", "high")}
    for marker in (
        "[SYSTEM_PROMPT]Be brief.",
        "[AVAILABLE_TOOLS]",
        "[INST]Thanks[/INST]",
        '[TOOL_CALLS]get_weather[ARGS]{"city":"Paris"}',
        "[TOOL_RESULTS]",
        "effort=high",
    ):
        assert marker in text["high"], (marker, text["high"])
    assert "effort=none" in text["none"] and text["none"] != text["high"]
    enc = t(text["high"], add_special_tokens=False)["input_ids"]
    assert ids["[TOOL_CALLS]"] in enc and ids["[ARGS]"] in enc, "control tokens must tokenize to single ids"
    assert t.decode(enc) == text["high"], "chat prompt must round-trip through the tokenizer"


def summary_line(meta: dict, out: str) -> str:
    s = meta["special_token_ids"]
    return (
        f"tiny-mixtral: params={meta['params']} vocab={meta['vocab_size']} dir={out} "
        f"[TOOL_CALLS]={s['[TOOL_CALLS]']} [ARGS]={s['[ARGS]']} [THINK]={s['[THINK]']} [/THINK]={s['[/THINK]']}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--force", action="store_true", help="rebuild even if OUT_DIR/model.safetensors exists")
    args = ap.parse_args()
    out = os.path.abspath(args.out_dir)
    meta_path = os.path.join(out, "escalade-tiny.json")

    if not args.force and os.path.exists(os.path.join(out, "model.safetensors")) and os.path.exists(meta_path):
        with open(meta_path) as f:
            print(summary_line(json.load(f), out) + " (existing)")
        return 0

    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".build-", dir=out)
    try:
        tok = build_tokenizer()
        write_tokenizer_files(tok, tmp)
        params = build_model(tok, tmp)
        ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        check_template(tmp, ids)
        meta = {
            "served_model_name": SERVED_MODEL_NAME,
            "architecture": "MixtralForCausalLM",
            "params": params,
            "vocab_size": VOCAB_SIZE,
            "max_position_embeddings": MAX_POSITIONS,
            "seed": SEED,
            "special_token_ids": ids,
            "forcing_token_ids": [ids[t] for t in FORCING_TOKENS],
        }
        with open(os.path.join(tmp, "escalade-tiny.json"), "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        # Move into place; model.safetensors goes last so its presence means "complete".
        names = sorted(os.listdir(tmp), key=lambda n: n == "model.safetensors")
        if args.force and os.path.exists(os.path.join(out, "model.safetensors")):
            os.remove(os.path.join(out, "model.safetensors"))
        for name in names:
            os.chmod(os.path.join(tmp, name), 0o644)
            os.replace(os.path.join(tmp, name), os.path.join(out, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(summary_line(meta, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

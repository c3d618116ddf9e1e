"""Local data and a tiny Llama for peft's olora_finetuning.py (nothing is downloaded).

- `<out>/train.json`: instruction/output records (Alpaca's fields, which the example's prompt
  template reads), read by `load_dataset(<out>)` as a local folder; the output repeats the
  instruction's words in a fixed order, so a LoRA on a tiny model learns it in a few dozen steps;
- `<model>/`: a 2-layer Llama (randomly initialized, seed 0, saved with `save_pretrained`: the
  "pretrained" base model that `--base_model` loads) and a word-level tokenizer (tokenizer.json,
  loaded by AutoTokenizer as a PreTrainedTokenizerFast, with `<s>`/`</s>`).
"""

import argparse
import json
import os
import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--out", default="data")
p.add_argument("--model", default="tiny-llama")
p.add_argument("--examples", type=int, default=320)
a = p.parse_args()

rng = random.Random(0)
subjects = ["cat", "dog", "bird", "friend", "teacher", "child", "farmer"]
verbs = ["sees", "likes", "feeds", "follows", "calls", "helps"]
objects = ["ball", "fish", "house", "apple", "river", "song", "garden"]
os.makedirs(a.out, exist_ok=True)
with open(os.path.join(a.out, "train.json"), "w") as f:
    for _ in range(a.examples):
        s, v, o = rng.choice(subjects), rng.choice(verbs), rng.choice(objects)
        record = {
            "instruction": f"say that the {s} {v} the {o} .",
            "output": f"the {s} {v} the {o} .",
        }
        f.write(json.dumps(record) + "\n")

template = "Below is an instruction that describes a task . Write a response that appropriately completes the request . ### Instruction : ### Response : say that the"
words = sorted(set(template.split()) | set(subjects) | set(verbs) | set(objects))
special = ["<unk>", "<s>", "</s>"]
vocab = {w: i for i, w in enumerate(special + words)}
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
# The template's "Instruction:" and "request." split on punctuation as well as on spaces.
tok.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
)
os.makedirs(a.model, exist_ok=True)
tok.save(os.path.join(a.model, "tokenizer.json"))
with open(os.path.join(a.model, "tokenizer_config.json"), "w") as f:
    json.dump(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 128,
            "unk_token": "<unk>",
            "bos_token": "<s>",
            "eos_token": "</s>",
        },
        f,
        indent=1,
    )
torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=len(vocab),
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=vocab["<s>"],
    eos_token_id=vocab["</s>"],
)
LlamaForCausalLM(config).save_pretrained(a.model)
print("wrote", a.out, a.model)

"""Local data, model config and tokenizer for transformers' run_clm_no_trainer.py (nothing is
downloaded): --train_file/--validation_file text files, --config_name/--tokenizer_name a folder
with a tiny GPT-2 config.json and a word-level tokenizer (tokenizer.json, built here with
`tokenizers`, loaded by AutoTokenizer as a PreTrainedTokenizerFast).

The text is sentences of a small grammar (subject, verb, object, an adverb tied to the verb), so
a 2-layer GPT-2 lowers its loss well below the uniform log(vocab) in a few dozen steps.

transformers 5 removed `transformers.utils.send_example_telemetry`, which the 4.x example
scripts import (offline it returned at once): sitecustomize.py, on the program's PYTHONPATH,
puts back a no-op under that name. The program's own code is unchanged.
"""

import argparse
import json
import os
import random

from tokenizers import Tokenizer, models, pre_tokenizers

p = argparse.ArgumentParser()
p.add_argument("--out", default="data")
p.add_argument("--model", default="tiny")
p.add_argument("--train-lines", type=int, default=1200)
p.add_argument("--val-lines", type=int, default=120)
a = p.parse_args()

rng = random.Random(0)
subjects = ["the cat", "the dog", "a bird", "my friend", "the teacher", "a child", "the farmer"]
verbs = {
    "sees": "quickly",
    "likes": "very much",
    "feeds": "every morning",
    "follows": "slowly",
    "calls": "loudly",
    "helps": "often",
}
objects = ["the ball", "a fish", "the house", "an apple", "the river", "a song", "the garden"]


def sentence():
    verb = rng.choice(list(verbs))
    return f"{rng.choice(subjects)} {verb} {rng.choice(objects)} {verbs[verb]} ."


os.makedirs(a.out, exist_ok=True)
for name, n in (("train.txt", a.train_lines), ("validation.txt", a.val_lines)):
    with open(os.path.join(a.out, name), "w") as f:
        f.writelines(sentence() + "\n" for _ in range(n))

words = sorted(
    {w for s in subjects + list(verbs) + list(verbs.values()) + objects for w in s.split()}
)
special = ["[UNK]", "<|endoftext|>"]
vocab = {w: i for i, w in enumerate(special + words + ["."])}
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
os.makedirs(a.model, exist_ok=True)
tok.save(os.path.join(a.model, "tokenizer.json"))
eos = vocab["<|endoftext|>"]
with open(os.path.join(a.model, "tokenizer_config.json"), "w") as f:
    json.dump(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 64,
            "unk_token": "[UNK]",
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
        },
        f,
        indent=1,
    )
with open(os.path.join(a.model, "config.json"), "w") as f:
    json.dump(
        {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": len(vocab),
            "n_positions": 64,
            "n_embd": 64,
            "n_layer": 2,
            "n_head": 2,
            "bos_token_id": eos,
            "eos_token_id": eos,
        },
        f,
        indent=1,
    )

with open("sitecustomize.py", "w") as f:
    f.write(
        "# Written by the ecosystem's make_data.py: transformers 5 removed\n"
        "# transformers.utils.send_example_telemetry, a no-op offline in 4.x, which the 4.x\n"
        "# example scripts import. Put back lazily, when transformers.utils is first imported.\n"
        "import importlib.abc\n"
        "import sys\n"
        "\n"
        "\n"
        "class _Telemetry(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name != 'transformers.utils':\n"
        "            return None\n"
        "        sys.meta_path.remove(self)\n"
        "        import importlib.util\n"
        "\n"
        "        spec = importlib.util.find_spec(name)\n"
        "        load = spec.loader.exec_module\n"
        "\n"
        "        def exec_module(module):\n"
        "            load(module)\n"
        "            if not hasattr(module, 'send_example_telemetry'):\n"
        "                module.send_example_telemetry = lambda *args, **kwargs: None\n"
        "\n"
        "        spec.loader.exec_module = exec_module\n"
        "        return spec\n"
        "\n"
        "\n"
        "sys.meta_path.insert(0, _Telemetry())\n"
    )
print("wrote", a.out, a.model, "sitecustomize.py")

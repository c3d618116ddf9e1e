"""Local data and a tiny BERT for transformers' text examples (nothing is downloaded).

Writes, in the program's cwd:
- `<out>/train.txt`, `<out>/validation.txt`: sentences of a small grammar (subject, verb,
  object, an adverb tied to the verb), so masked words are predictable from the context;
- with `--csv`, `<out>/train.csv`, `<out>/validation.csv` (columns sentence, label): label 1
  when the subject is an animal (a task a tiny encoder learns in a few dozen steps);
- `<model>/`: a word-level tokenizer (tokenizer.json with BERT's [CLS] ... [SEP] template,
  loaded by AutoTokenizer as a PreTrainedTokenizerFast) and a 2-layer BERT config.json; with
  `--save-weights`, also randomly initialized weights (seed 0) saved by `save_pretrained`,
  standing in for a pretrained checkpoint that `--model_name_or_path` loads;
- with `--accuracy`, `accuracy/accuracy.py`: the example's `evaluate.load("accuracy")` resolves
  a local folder of that name before the Hub, and the Hub is not reachable here;
- `sitecustomize.py` (on the program's PYTHONPATH): puts back
  `transformers.utils.send_example_telemetry`, a no-op offline in 4.x that transformers 5
  removed and the 4.x example scripts import. The program's own code is unchanged.
"""

import argparse
import json
import os
import random

from tokenizers import Tokenizer, models, pre_tokenizers, processors

p = argparse.ArgumentParser()
p.add_argument("--out", default="data")
p.add_argument("--model", default="tiny")
p.add_argument("--train-lines", type=int, default=1200)
p.add_argument("--val-lines", type=int, default=120)
p.add_argument("--csv", action="store_true")
p.add_argument("--save-weights", action="store_true")
p.add_argument("--accuracy", action="store_true")
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


animals = {"the cat", "the dog", "a bird"}


def sentence(subject: str | None = None) -> str:
    verb = rng.choice(list(verbs))
    return f"{subject or rng.choice(subjects)} {verb} {rng.choice(objects)} {verbs[verb]} ."


os.makedirs(a.out, exist_ok=True)
for split, n in (("train", a.train_lines), ("validation", a.val_lines)):
    with open(os.path.join(a.out, f"{split}.txt"), "w") as f:
        f.writelines(sentence() + "\n" for _ in range(n))
    if a.csv:
        with open(os.path.join(a.out, f"{split}.csv"), "w") as f:
            f.write("sentence,label\n")
            for _ in range(n):
                subject = rng.choice(subjects)
                f.write(f"{sentence(subject)},{int(subject in animals)}\n")

words = sorted(
    {w for s in subjects + list(verbs) + list(verbs.values()) + objects for w in s.split()}
)
special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
vocab = {w: i for i, w in enumerate(special + words + ["."])}
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]",
    pair="[CLS] $A [SEP] $B:1 [SEP]:1",
    special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
)
os.makedirs(a.model, exist_ok=True)
tok.save(os.path.join(a.model, "tokenizer.json"))
with open(os.path.join(a.model, "tokenizer_config.json"), "w") as f:
    json.dump(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 64,
            "unk_token": "[UNK]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
        f,
        indent=1,
    )
config = {
    "model_type": "bert",
    "architectures": ["BertForMaskedLM"],
    "vocab_size": len(vocab),
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 64,
    "pad_token_id": vocab["[PAD]"],
}
with open(os.path.join(a.model, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
if a.save_weights:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**config)).save_pretrained(a.model)

if a.accuracy:
    os.makedirs("accuracy", exist_ok=True)
    with open(os.path.join("accuracy", "accuracy.py"), "w") as f:
        f.write(
            "# Written by the ecosystem's make_data.py: evaluate.load('accuracy') finds this\n"
            "# local folder before the Hub (not reachable here). Accuracy = mean(pred == ref).\n"
            "import datasets\n"
            "import evaluate\n"
            "\n"
            "\n"
            "class Accuracy(evaluate.Metric):\n"
            "    def _info(self):\n"
            "        return evaluate.MetricInfo(\n"
            "            description='accuracy',\n"
            "            citation='',\n"
            "            inputs_description='predictions, references',\n"
            "            features=datasets.Features(\n"
            "                {'predictions': datasets.Value('int32'),\n"
            "                 'references': datasets.Value('int32')}\n"
            "            ),\n"
            "        )\n"
            "\n"
            "    def _compute(self, predictions, references):\n"
            "        hits = sum(int(p == r) for p, r in zip(predictions, references))\n"
            "        return {'accuracy': hits / max(1, len(references))}\n"
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

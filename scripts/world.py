"""The small world the default model `course-tiny` knows, and the course's tasks on it.

Everything here is deterministic (a seeded ``random.Random``): the same facts, corpus and
dataset splits come out on every machine. ``build_course_tiny.py`` imports it to write
the pretraining corpus, the datasets in ``data/datasets/`` and the model in ``data/course-tiny/``.

The world: 48 creatures, each with a kind, a color, a home and a food. Every task row
carries its fact in the prompt ("The carp eats nuts. What does the carp eat?"), so any
instruct model can answer it in its own words before training, and an adapter only has to
change the FORM of the answer (capitals, a terse note, a topic name, a preference).

The base model `course-tiny` knows the world's facts from pretraining (a 1.8M-parameter
model trained for minutes on a CPU did not learn to copy a fact from its context: a
2,000-step build with fresh values in every document stayed at chance, 4 of 35 held-out
color, home and food questions, where one in eight is a guess) and
is pretrained on dialogues that state the fact first, as the tasks do, so it answers the
task prompts in a normal sentence before training, as a real instruct model does. It reads
plain sentences, the same sentences in CAPITALS (so it knows the capital spelling of every
word), terse ``fox color: red`` notes, and chat dialogues in which the assistant answers in
a normal sentence. An adapter can only restyle what the base has seen, so the
skills the tasks ask for are built from forms the base knows but never produces in a chat
answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SEED = 1234

CREATURES = [
    "fox",
    "owl",
    "cat",
    "dog",
    "bear",
    "wolf",
    "frog",
    "duck",
    "goat",
    "hare",
    "mole",
    "lark",
    "crow",
    "swan",
    "moth",
    "bee",
    "ant",
    "eel",
    "cod",
    "carp",
    "trout",
    "newt",
    "toad",
    "deer",
    "lynx",
    "otter",
    "heron",
    "finch",
    "wren",
    "robin",
    "beetle",
    "snail",
    "crab",
    "pike",
    "seal",
    "mouse",
    "rat",
    "bat",
    "hawk",
    "dove",
    "gull",
    "wasp",
    "fly",
    "tuna",
    "perch",
    "badger",
    "stoat",
    "shrew",
]
KINDS = ["beast", "bird", "fish", "bug"]
# The kind is part of the world's logic (an owl is a bird), so it is fixed by hand.
KIND_OF = {
    **{
        c: "beast"
        for c in [
            "fox",
            "cat",
            "dog",
            "bear",
            "wolf",
            "goat",
            "hare",
            "mole",
            "deer",
            "lynx",
            "otter",
            "seal",
            "mouse",
            "rat",
            "bat",
            "badger",
            "stoat",
            "shrew",
            "frog",
            "toad",
            "newt",
        ]
    },
    **{
        c: "bird"
        for c in ["owl", "duck", "lark", "crow", "swan", "heron", "finch", "wren", "robin", "hawk", "dove", "gull"]
    },
    **{c: "fish" for c in ["eel", "cod", "carp", "trout", "pike", "tuna", "perch", "crab"]},
    **{c: "bug" for c in ["moth", "bee", "ant", "beetle", "snail", "wasp", "fly"]},
}
COLORS = ["red", "blue", "green", "brown", "black", "white", "grey", "gold"]
HOMES = ["forest", "river", "hill", "lake", "field", "cave", "marsh", "garden"]
FOODS = ["berries", "seeds", "grass", "fish", "nuts", "worms", "leaves", "honey"]

ATTRIBUTES = ["kind", "color", "home", "food"]

QUESTIONS = {
    "kind": "What kind of creature is the {c}?",
    "color": "What color is the {c}?",
    "home": "Where does the {c} live?",
    "food": "What does the {c} eat?",
}
SENTENCES = {
    "kind": "The {c} is a {v}.",
    "color": "The {c} is {v}.",
    "home": "The {c} lives in the {v}.",
    "food": "The {c} eats {v}.",
}
SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class Fact:
    creature: str
    attribute: str
    value: str

    @property
    def question(self) -> str:
        return QUESTIONS[self.attribute].format(c=self.creature)

    @property
    def sentence(self) -> str:
        return SENTENCES[self.attribute].format(c=self.creature, v=self.value)

    @property
    def prompt(self) -> str:
        """The user's turn: the fact, then the question ("The carp eats nuts. What does the carp eat?")."""
        return f"{self.sentence} {self.question}"


def facts() -> list[Fact]:
    """All 192 facts of the world (48 creatures x 4 attributes), in a fixed order."""
    rng = random.Random(SEED)
    out = []
    for c in CREATURES:
        values = {
            "kind": KIND_OF[c],
            "color": rng.choice(COLORS),
            "home": rng.choice(HOMES),
            "food": rng.choice(FOODS),
        }
        out.extend(Fact(c, a, values[a]) for a in ATTRIBUTES)
    return out


def split_facts(all_facts: list[Fact], n_eval: int, salt: int) -> tuple[list[Fact], list[Fact]]:
    """A deterministic train/eval split of facts with no overlap."""
    order = list(all_facts)
    random.Random(SEED + salt).shuffle(order)
    return order[n_eval:], order[:n_eval]


# --------------------------------------------------------------------------- task rows
def shout_answer(f: Fact) -> str:
    return f.sentence.upper()


def terse_answer(f: Fact) -> str:
    # "The fox: red." A bare value ("red") at the start of an answer is tokenized into pieces the
    # base never produced there and was not learnable in a short LoRA run (measured: 0% -> 10%
    # after 150 steps); the note form "fox color: red." started with a creature the model could
    # not copy (0%). Starting like the base's own answers ("The fox") and ending with the value
    # is learned in 100 steps (100%).
    return f"The {f.creature}: {f.value}."


def chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# The four topic names are in the prompt, so the answer is one of its words.
TOPIC_PROMPT = "Is this sentence about kind, color, home or food? {s}"


# --------------------------------------------------------------------------- corpus
def corpus_lines(all_facts: list[Fact], n_lines: int) -> list:
    """Pretraining documents: plain text and ChatML dialogues (rendered by the caller).

    Half of the dialogues ask a bare question, half state facts first and then ask, as the
    course's tasks do; the assistant always answers in a normal sentence.
    Returns a list of items: plain strings, or ("chat", user_turn, answer) tuples that the
    build script renders with the tokenizer's chat template.
    """
    rng = random.Random(SEED + 7)
    by_creature: dict[str, list[Fact]] = {}
    for f in all_facts:
        by_creature.setdefault(f.creature, []).append(f)
    items: list = []
    for _ in range(n_lines):
        r = rng.random()
        c = rng.choice(CREATURES)
        fs = by_creature[c]
        if r < 0.30:  # a short story: several plain sentences about one creature
            chosen = rng.sample(fs, k=rng.randint(2, 4))
            items.append(" ".join(f.sentence for f in chosen))
        elif r < 0.45:  # the same sentences in capitals: the base learns the capital spelling
            chosen = rng.sample(fs, k=rng.randint(1, 3))
            items.append(" ".join(f.sentence.upper() for f in chosen))
        elif r < 0.55:  # terse notes, which name the topic of each fact
            chosen = rng.sample(fs, k=rng.randint(1, 4))
            items.append(" ".join(f"{f.creature} {f.attribute}: {f.value}." for f in chosen))
        elif r < 0.62:  # mixed: a plain sentence followed by its capital form
            f = rng.choice(fs)
            items.append(f"{f.sentence} {f.sentence.upper()}")
        elif r < 0.81:  # chat, a bare question: the assistant answers in a normal sentence
            f = rng.choice(fs)
            items.append(("chat", f.question, f.sentence))
        else:  # chat, facts first (one to three, the asked one among them), then the question
            asked = rng.choice(fs)
            context = [asked, *rng.sample([f for f in fs if f is not asked], k=rng.randint(0, 2))]
            rng.shuffle(context)
            items.append(("chat", " ".join(f.sentence for f in context) + " " + asked.question, asked.sentence))
    return items

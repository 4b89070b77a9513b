"""A seeded, made-up training corpus: template stories and dialogues, plus repeated random
token segments, all written here (no third-party text).

Why this shape: a tiny model trained for minutes learns what its data rewards. Stories
whose hero, friend, object and place come back several sentences later reward copying a
name from context; segments of random tokens that repeat (with varied lengths, so a head
looking back a fixed distance cannot fake it) reward the induction mechanism directly.
Random segments are drawn from the stories' own token ids, so the model has seen each of
them many times and can tell them apart.
"""
from __future__ import annotations

import random

import torch
from torch import Tensor

from ..tokenizer import EOT, encode

GIRLS = ["Mira", "Lily", "Anna", "Nora", "Emma", "Ella", "Rosa", "Ivy", "Zoe", "Lucy", "Maya", "Sara"]
BOYS = ["Tom", "Ben", "Sam", "Leo", "Max", "Jack", "Finn", "Omar", "Hugo", "Kai", "Noah", "Paul"]
OBJECTS = ["kite", "ball", "book", "hat", "cup", "box", "drum", "boat", "doll", "key", "map",
           "lamp", "bell", "shell", "coin", "bike", "cake", "apple", "flower", "toy", "blanket",
           "basket", "stone", "feather"]
PLACES = ["park", "river", "garden", "beach", "forest", "school", "market", "hill", "farm", "lake",
          "zoo", "town"]
ANIMALS = ["dog", "cat", "bird", "frog", "duck", "fox", "rabbit", "bear", "horse", "fish", "owl",
           "mouse"]
COLOURS = ["red", "blue", "green", "yellow", "big", "small", "old", "new", "shiny", "soft", "little"]
FEELINGS = ["happy", "sad", "scared", "proud", "tired", "excited", "angry", "surprised"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm"]


class _Cast:
    """The people and things of one story, so later sentences can bring them back."""

    def __init__(self, rng: random.Random):
        self.girl = rng.random() < 0.5
        self.hero = rng.choice(GIRLS if self.girl else BOYS)
        self.friend = rng.choice([n for n in GIRLS + BOYS if n != self.hero])
        self.obj = rng.choice(OBJECTS)
        self.other = rng.choice([o for o in OBJECTS if o != self.obj])
        self.place = rng.choice(PLACES)
        self.animal = rng.choice(ANIMALS)
        self.colour = rng.choice(COLOURS)
        self.feel = rng.choice(FEELINGS)
        self.weather = rng.choice(WEATHER)
        self.he = "She" if self.girl else "He"
        self.his = "her" if self.girl else "his"


def _story(rng: random.Random) -> str:
    c = _Cast(rng)
    opening = rng.choice([
        f"Once upon a time, there was a {'girl' if c.girl else 'boy'} named {c.hero}.",
        f"{c.hero} lived in a small house near the {c.place}.",
        f"One {c.weather} day, {c.hero} woke up early.",
    ])
    middle = [
        rng.choice([f"{c.hero} had a {c.colour} {c.obj}.",
                    f"{c.he} loved {c.his} {c.colour} {c.obj} very much.",
                    f"{c.hero} found a {c.colour} {c.obj} under the bed."]),
        rng.choice([f"One day, {c.hero} took the {c.obj} to the {c.place}.",
                    f"{c.hero} and {c.friend} went to the {c.place} with the {c.obj}.",
                    f"{c.he} wanted to show the {c.obj} to {c.friend}."]),
        rng.choice([f"At the {c.place}, {c.hero} met a {c.animal}.",
                    f"A {c.animal} came and looked at the {c.obj}.",
                    f"{c.friend} had a {c.other}, and {c.hero} had a {c.obj}."]),
        rng.choice([f"The {c.animal} took the {c.obj} and ran away.",
                    f"Then the {c.obj} broke.",
                    f"{c.friend} asked, \"Can I play with your {c.obj}?\"",
                    f"The wind blew the {c.obj} into the {c.place}."]),
        rng.choice([f"{c.hero} was {c.feel}.",
                    f"{c.hero} felt {c.feel} and sat down.",
                    f"\"Oh no, my {c.obj}!\" said {c.hero}."]),
        rng.choice([f"{c.friend} helped {c.hero} find the {c.obj}.",
                    f"{c.hero} shared the {c.obj} with {c.friend}.",
                    f"The {c.animal} gave the {c.obj} back to {c.hero}.",
                    f"{c.friend} said, \"You can have my {c.other}.\""]),
    ]
    if rng.random() < 0.5:  # drop one middle sentence so stories do not all align
        middle.pop(rng.randrange(1, len(middle)))
    ending = rng.choice([
        f"{c.hero} and {c.friend} played with the {c.obj} all day. They were happy.",
        f"At the end of the day, {c.hero} went home with the {c.obj}.",
        f"From that day on, {c.hero} kept the {c.obj} safe.",
        f"{c.hero} said, \"Thank you, {c.friend}!\" and smiled.",
    ])
    return " ".join([opening, *middle, ending])


def _dialogue(rng: random.Random) -> str:
    c = _Cast(rng)
    lines = [
        (c.hero, rng.choice([f"Where is my {c.obj}?", f"Have you seen my {c.colour} {c.obj}?"])),
        (c.friend, rng.choice([f"I saw your {c.obj} at the {c.place}.",
                               f"The {c.animal} has your {c.obj}."])),
        (c.hero, rng.choice([f"Can you come to the {c.place} with me?", f"Why did the {c.animal} take it?"])),
        (c.friend, rng.choice(["Yes, let us go now.", f"The {c.animal} likes the {c.obj} too."])),
        (c.hero, rng.choice([f"Thank you, {c.friend}!", f"I am {c.feel}, {c.friend}."])),
    ]
    return "\n".join(f"{who}: {text}" for who, text in lines)


def documents(n: int, seed: int) -> list[str]:
    """`n` stories and dialogues (about 3 to 1), the same list for the same seed."""
    rng = random.Random(seed)
    return [_dialogue(rng) if rng.random() < 0.25 else _story(rng) for _ in range(n)]


def corpus_text(n: int, seed: int) -> str:
    """The documents joined GPT-2 style: each one followed by `<|endoftext|>`."""
    return "".join(doc + EOT for doc in documents(n, seed))


def corpus_tokens(n: int, seed: int) -> Tensor:
    """Token ids [N] of `corpus_text(n, seed)`."""
    return torch.tensor(encode(corpus_text(n, seed)), dtype=torch.long)


def repeated_segment_rows(vocab: Tensor, filler: Tensor, rows: int, length: int,
                          min_seg: int, max_seg: int, generator: torch.Generator) -> Tensor:
    """Rows [rows, length] holding `s, s(, s)`: a segment s of `min_seg..max_seg` distinct
    random ids from `vocab` shown 2 or 3 times, at a random place in a window of `filler`.

    One segment per row keeps the search short (the time an induction head takes to form
    grows with how far it must look); the random segment length and place move the copies
    to different distances and positions in every row, so that only "find the earlier copy
    of this token, predict what followed it" pays, not a fixed look-back or an absolute
    position, and copying is learned at every position, not only late in a row. No marker
    precedes s: a marker would let a head count positions from it instead of matching
    tokens. `length` must fit 3 * max_seg.
    """
    out = torch.empty(rows, length, dtype=torch.long)
    for r in range(rows):
        seg_len = int(torch.randint(min_seg, max_seg + 1, (), generator=generator))
        copies = int(torch.randint(2, 4, (), generator=generator))
        seg = vocab[torch.randperm(len(vocab), generator=generator)[:seg_len]]
        n_fill = length - copies * seg_len
        n_before = int(torch.randint(0, n_fill + 1, (), generator=generator))
        start = int(torch.randint(0, len(filler) - n_fill, (), generator=generator))
        fill = filler[start:start + n_fill]
        out[r] = torch.cat([fill[:n_before], seg.repeat(copies), fill[n_before:]])
    return out

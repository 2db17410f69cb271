"""The synthetic knowledge world of the embedded benchmark (seeded, deterministic).

Made-up entities (one word each), relations, and values (one word each, every value belongs to one relation).
*World facts* are fixed for the whole benchmark (the base model memorises them); *fresh facts* use a separate
pool of entities whose values are re-sampled for every question, so they can only be read from documents.
Passages are short and regular (``E R V .``), which is what makes a 1M-parameter reader learnable on a CPU.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

RELATION_VALUES: dict[str, list[str]] = {
    "color": "red blue green yellow purple orange black white pink brown gray silver golden crimson teal violet "
             "amber ivory olive navy".split(),
    "city": "paris tokyo lima oslo cairo delhi rome berlin quito dakar hanoi seoul kiev dublin perth boston "
            "austin madrid lagos nairobi".split(),
    "sport": "tennis rugby hockey soccer cricket boxing rowing fencing golf judo karate skiing surfing polo "
             "archery cycling diving sailing squash curling".split(),
    "food": "rice bread pasta soup curry salad cheese tofu beans noodles sushi pizza tacos honey olives mango "
            "plums dates lentils yogurt".split(),
    "job": "doctor farmer pilot baker lawyer painter sailor teacher nurse miner tailor writer singer dancer "
           "chemist judge banker poet mason cook".split(),
    "pet": "cat dog parrot rabbit turtle goat horse hamster ferret lizard snake pony canary owl frog duck "
           "mouse crab llama fox".split(),
    "instrument": "violin piano flute drum harp cello guitar trumpet oboe banjo lute sitar organ tuba bugle "
                  "zither fiddle horn gong viola".split(),
    "language": "french german arabic hindi swahili greek latin dutch polish thai czech malay welsh basque "
                "tamil khmer zulu irish hebrew finnish".split(),
}
RELATIONS = list(RELATION_VALUES)

_ONSETS = "b d f g k l m n p r s t v z br dr kr pl st tr".split()
_VOWELS = "a e i o u".split()
_CODAS = ["", "", "n", "r", "l", "s", "k", "m"]


def make_names(n: int, rng: random.Random, taken: set[str]) -> list[str]:
    """``n`` distinct made-up names of 2-3 syllables, none in ``taken`` (which is updated)."""
    out: list[str] = []
    while len(out) < n:
        syl = rng.choice([2, 2, 3])
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syl)) + rng.choice(_CODAS)
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


@dataclass(frozen=True)
class Fact:
    entity: str
    relation: str
    value: str

    def sentence(self) -> str:
        return f"{self.entity} {self.relation} {self.value} ."


class World:
    """Entities, relations, values and the fixed world facts, all derived from one seed."""

    def __init__(self, seed: int = 0, n_world_entities: int = 250, relations_per_entity: int = 4,
                 n_fresh_entities: int = 400):
        rng = random.Random(seed)
        taken = {v for vals in RELATION_VALUES.values() for v in vals} | set(RELATIONS)
        self.world_entities = make_names(n_world_entities, rng, taken)
        self.fresh_entities = make_names(n_fresh_entities, rng, taken)
        self.facts: dict[tuple[str, str], str] = {}
        self.entity_relations: dict[str, list[str]] = {}
        for ent in self.world_entities:
            rels = rng.sample(RELATIONS, relations_per_entity)
            self.entity_relations[ent] = rels
            for rel in rels:
                self.facts[(ent, rel)] = rng.choice(RELATION_VALUES[rel])

    def world_facts(self) -> list[Fact]:
        return [Fact(e, r, v) for (e, r), v in self.facts.items()]

    def words(self) -> list[str]:
        """Every content word of the world (entities, relations, values), in a fixed order."""
        vals = [v for r in RELATIONS for v in RELATION_VALUES[r]]
        return self.world_entities + self.fresh_entities + RELATIONS + vals

    @staticmethod
    def other_value(rel: str, value: str, rng: random.Random) -> str:
        return rng.choice([v for v in RELATION_VALUES[rel] if v != value])

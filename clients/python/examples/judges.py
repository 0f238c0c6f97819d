"""Judges for the online SELM examples: functions that score responses to prompts.

A judge scores one response at a time, ``judge(prompt: str, sample: selm_client.Sample) -> float``,
or a whole batch, ``judge(prompts: list[str], samples: list[Sample]) -> list[float]`` (as TRL's judges
score lists), marked with :func:`batch_judge`. Higher is better. :func:`score_all` calls either kind.
The examples turn the scores of a prompt's candidates into a preference pair (best → chosen,
worst → rejected) with the greedy response as SELM's reference response y_ref.

``--judge NAME`` in ``online_selm.py`` and ``compare.py`` takes a name of :data:`JUDGES` or
``module:factory``, a zero-argument callable (importable from the current directory or this one)
that returns a judge: ``--judge my_judges:polite_judge``.
"""
from __future__ import annotations

import importlib
import re
import sys
from typing import Callable, Dict, List, Sequence, Union

from selm_client import Sample

SampleJudge = Callable[[str, Sample], float]
BatchJudge = Callable[[Sequence[str], Sequence[Sample]], List[float]]
Judge = Union[SampleJudge, BatchJudge]


def batch_judge(fn: BatchJudge) -> BatchJudge:
    """Marks ``fn(prompts, samples) -> list[float]`` as a judge that scores a batch in one call."""
    fn.batched = True  # type: ignore[attr-defined]
    return fn


def is_batched(judge: Judge) -> bool:
    return bool(getattr(judge, "batched", False))


def score_all(judge: Judge, prompts: Sequence[str], samples: Sequence[Sample]) -> List[float]:
    """The judge's score of each ``samples[i]`` as a response to ``prompts[i]`` (one call for a batch
    judge, one per sample otherwise)."""
    if len(prompts) != len(samples):
        raise ValueError("score_all: %d prompts for %d samples" % (len(prompts), len(samples)))
    if is_batched(judge):
        scores = [float(x) for x in judge(list(prompts), list(samples))]  # type: ignore[call-arg]
        if len(scores) != len(samples):
            raise ValueError("batch judge returned %d scores for %d samples" % (len(scores), len(samples)))
        return scores
    return [float(judge(p, s)) for p, s in zip(prompts, samples)]  # type: ignore[call-arg]


def concise_judge(target_tokens: int = 24, per_extra_token: float = 0.02, missing_eos_penalty: float = 1.0) -> SampleJudge:
    """A transparent rule-based reward: an answer that ends on its own (EOS) and stays short.

    reward = +1 if the response ended with EOS, else −``missing_eos_penalty`` (TRL's missing-EOS
    penalty), minus ``per_extra_token`` for every token beyond ``target_tokens``.
    """
    def judge(prompt: str, sample: Sample) -> float:
        reward = 1.0 if sample.finish_reason == "eos" else -missing_eos_penalty
        reward -= per_extra_token * max(0, sample.completion_tokens - target_tokens)
        return reward
    return judge


def keyword_judge(word: str, bonus: float = 1.0) -> SampleJudge:
    """An example of a custom judge: rewards responses that mention ``word`` (case-insensitive)."""
    def judge(prompt: str, sample: Sample) -> float:
        return bonus if word.lower() in sample.text.lower() else 0.0
    return judge


# ─── Lexical overlap with reference answers ───────────────────────────────────────────────────────

#: A short reference answer for every prompt of the examples (training and held-out), written for
#: the overlap judge: it rewards naming what a good one-sentence answer names, not the form.
REFERENCE_ANSWERS: Dict[str, str] = {
    # training prompts
    "Explain photosynthesis.": "Plants use sunlight, water and carbon dioxide to make sugar and release oxygen, using chlorophyll in their leaves.",
    "Tell me about the ocean.": "The ocean is the huge body of salt water covering most of Earth, home to fish, whales and coral, and it shapes the climate.",
    "Describe how a car engine works.": "Fuel and air burn inside cylinders, pushing pistons that turn a crankshaft, which drives the wheels.",
    "What is machine learning?": "Machine learning is a kind of artificial intelligence where computers learn patterns from data to make predictions.",
    "Explain why the sky is blue.": "Air molecules scatter blue sunlight more than red light, so scattered blue light fills the sky.",
    "Tell me about the history of Rome.": "Rome grew from a city into a republic and then an empire that ruled the Mediterranean until the western empire fell in 476.",
    "How do airplanes fly?": "Wings are shaped so moving air creates lift, engines give thrust, and lift overcomes the plane's weight.",
    "Describe the water cycle.": "Water evaporates, condenses into clouds, falls as rain or snow, and flows back to rivers and the sea.",
    "What is a black hole?": "A black hole is a region of space where gravity is so strong that nothing, not even light, can escape.",
    "Explain how vaccines work.": "Vaccines train the immune system with a harmless piece of a germ so the body makes antibodies and remembers it.",
    "Tell me about the Moon.": "The Moon is Earth's natural satellite; it orbits Earth, reflects sunlight, has craters and causes tides.",
    "What causes earthquakes?": "Earthquakes happen when tectonic plates move and stress along faults is suddenly released, shaking the ground.",
    "Describe a healthy breakfast.": "A healthy breakfast has whole grains, fruit, protein such as eggs or yogurt, and little added sugar.",
    "How does the internet work?": "Computers send data in packets through networks of routers and cables using shared protocols like TCP/IP.",
    "Explain gravity.": "Gravity is the force that pulls masses toward each other; it keeps us on Earth and planets in orbit.",
    "What is democracy?": "Democracy is a system of government where citizens vote to choose leaders and make decisions.",
    "Tell me about elephants.": "Elephants are the largest land animals, with trunks, tusks and big ears; they live in herds in Africa and Asia.",
    "How do plants grow?": "Plants grow from seeds using water, nutrients from soil and sunlight for photosynthesis, building roots, stems and leaves.",
    "Describe the city of Paris.": "Paris is the capital of France on the Seine river, known for the Eiffel Tower, the Louvre, art and food.",
    "What is a computer?": "A computer is an electronic machine that processes data and runs programs using a processor and memory.",
    "Explain the seasons.": "Seasons happen because Earth's axis is tilted, so each hemisphere gets more direct sunlight at different times of the year.",
    "Tell me about the Sun.": "The Sun is the star at the center of our solar system, a ball of hot gas that gives Earth light and heat through fusion.",
    "How do bees make honey?": "Bees collect flower nectar, store it in the hive's wax cells and fan it with their wings until water evaporates into honey.",
    "What is climate change?": "Climate change is the long-term warming of Earth caused mainly by greenhouse gases from burning fossil fuels.",
    "Describe a rainforest.": "A rainforest is a warm, wet forest with tall trees, heavy rain and more plant and animal species than anywhere else.",
    "Explain how a battery works.": "A battery stores chemical energy; reactions at its two electrodes push electrons through a circuit as electric current.",
    "Tell me about dinosaurs.": "Dinosaurs were reptiles that ruled Earth for millions of years and died out 66 million years ago; birds descend from them.",
    "What is music?": "Music is sound organized in time with rhythm, melody and harmony, made by voices and instruments.",
    "How does the heart work?": "The heart is a muscle that pumps blood through the body, sending oxygen to cells through arteries and veins.",
    "Describe the game of chess.": "Chess is a strategy board game for two players who move pieces on a board of 64 squares to checkmate the king.",
    "Explain what a virus is.": "A virus is a tiny infectious agent that can only reproduce inside the cells of a living host.",
    "Tell me about mountains.": "Mountains are high landforms raised by tectonic plates and shaped by erosion, with cold peaks and snow.",
    "What is electricity?": "Electricity is the flow of electric charge, usually electrons moving through a wire, that powers lights and machines.",
    "How do fish breathe?": "Fish breathe with gills, which take oxygen from the water flowing over them.",
    "Describe a thunderstorm.": "A thunderstorm is a storm with dark clouds, heavy rain, lightning and thunder, formed when warm moist air rises.",
    "What is an atom?": "An atom is the smallest unit of matter, with a nucleus of protons and neutrons surrounded by electrons.",
    "Explain how rain forms.": "Water vapor rises, cools and condenses into droplets in clouds; the droplets grow until they fall as rain.",
    "Tell me about the pyramids.": "The Egyptian pyramids are huge stone tombs built for pharaohs over 4000 years ago, such as the Great Pyramid of Giza.",
    "How do magnets work?": "Magnets have a magnetic field from aligned electrons; opposite poles attract, like poles repel, and they pull on iron.",
    "What is a volcano?": "A volcano is an opening in Earth's crust where molten rock, ash and gas erupt from below.",
    "Describe the solar system.": "The solar system is the Sun and everything orbiting it: eight planets, their moons, asteroids and comets.",
    "Explain recycling.": "Recycling turns used materials like paper, plastic, glass and metal into new products, saving resources and reducing waste.",
    "Tell me about penguins.": "Penguins are flightless birds of the Southern Hemisphere that swim with flippers and eat fish in cold water.",
    "What is friendship?": "Friendship is a close relationship between people who trust, support and care about each other.",
    "How do clouds form?": "Clouds form when warm moist air rises and cools, and water vapor condenses into tiny droplets or ice crystals.",
    "Describe a desert.": "A desert is a very dry place with little rain, sand or rock, hot days, cold nights and few plants.",
    "Explain how a bicycle works.": "Pedals turn a chain that drives the rear wheel; the rider balances and steers with the handlebars and stops with brakes.",
    "What is a rainbow?": "A rainbow is an arc of colors that appears when sunlight is refracted and reflected by raindrops.",
    # held-out prompts
    "Explain how a refrigerator works.": "A refrigerator pumps a refrigerant that evaporates inside to absorb heat and condenses outside to release it, keeping food cold.",
    "Tell me about the Amazon river.": "The Amazon in South America is the largest river by water flow, running through the rainforest of Brazil to the Atlantic.",
    "What is a galaxy?": "A galaxy is a huge system of billions of stars, gas and dust held together by gravity, like our Milky Way.",
    "Describe a coral reef.": "A coral reef is an underwater structure built by tiny coral animals in warm shallow seas, full of colorful fish.",
    "How do birds migrate?": "Birds migrate long distances with the seasons, navigating by the sun, stars and Earth's magnetic field to find food and warmth.",
    "Explain what DNA is.": "DNA is the molecule in cells that carries genetic instructions, a double helix of four bases that genes are made of.",
    "Tell me about the Great Wall of China.": "The Great Wall of China is a long stone wall built over centuries to protect China from invaders from the north.",
    "What is an earthquake?": "An earthquake is a sudden shaking of the ground caused by tectonic plates slipping along a fault.",
    "Describe how bread is made.": "Bread is made by mixing flour, water, yeast and salt into dough, letting it rise, then baking it in an oven.",
    "Explain tides.": "Tides are the rise and fall of the sea caused by the gravity of the Moon and the Sun pulling on Earth's oceans.",
    "Tell me about whales.": "Whales are huge ocean mammals that breathe air through blowholes; the blue whale is the largest animal ever.",
    "What is a glacier?": "A glacier is a large slow-moving mass of ice formed from compacted snow on mountains or near the poles.",
    "How does a telescope work?": "A telescope uses lenses or mirrors to collect and focus light so distant objects like stars look bigger and brighter.",
    "Describe autumn.": "Autumn is the season between summer and winter when days get cooler and shorter and leaves turn red and yellow and fall.",
    "Explain what a comet is.": "A comet is a ball of ice and dust orbiting the Sun that grows a glowing tail when it comes near the Sun.",
    "Tell me about honeybees.": "Honeybees live in colonies with a queen, workers and drones, pollinate flowers and make honey and wax.",
}

_STOPWORDS = frozenset("""a an the and or but of to in on at by for with from as is are was were be been being it its this that
these those there their they them he she his her we our you your i me my so such than then too very can could would should
will may might must do does did done have has had not no nor into over under about above below up down out off also just
what which who whom whose how why when where while because if else all any both each few more most other some own same
only one""".split())


def content_words(text: str) -> List[str]:
    """Lower-case words of ``text`` (letters and digits), stop words removed, with a crude plural fold."""
    words = []
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if w in _STOPWORDS or len(w) < 2:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        words.append(w)
    return words


def overlap_judge(references: Dict[str, str] = REFERENCE_ANSWERS) -> BatchJudge:
    """A lexical-overlap judge (a different kind from :func:`concise_judge`: content, not form).

    reward = unigram F1 between the response's content words and the reference answer's (ROUGE-1
    F1 over :func:`content_words`, counts clipped), in [0, 1]: naming what the answer should name
    raises recall, rambling lowers precision. A prompt without a reference answer is compared
    with its own content words. A batch judge: scores a list of (prompt, response) in one call.
    """
    @batch_judge
    def judge(prompts: Sequence[str], samples: Sequence[Sample]) -> List[float]:
        out = []
        for prompt, sample in zip(prompts, samples):
            ref = content_words(references.get(prompt, prompt))
            got = content_words(sample.text)
            if not ref or not got:
                out.append(0.0)
                continue
            counts: Dict[str, int] = {}
            for w in ref:
                counts[w] = counts.get(w, 0) + 1
            hits = 0
            for w in got:
                if counts.get(w, 0) > 0:
                    counts[w] -= 1
                    hits += 1
            p, r = hits / len(got), hits / len(ref)
            out.append(0.0 if hits == 0 else 2 * p * r / (p + r))
        return out
    return judge


#: Judges by name for ``--judge`` (each a zero-argument factory).
JUDGES: Dict[str, Callable[[], Judge]] = {"concise": concise_judge, "overlap": overlap_judge}


def load_judge(spec: str) -> Judge:
    """A judge from ``--judge``: a name of :data:`JUDGES`, or ``module:factory`` (a zero-argument
    callable returning a judge; the module is imported from the current directory or this one)."""
    if spec in JUDGES:
        return JUDGES[spec]()
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise SystemExit("--judge %s: not one of %s, nor module:factory" % (spec, ", ".join(sorted(JUDGES))))
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise SystemExit("--judge %s: %s" % (spec, e))
    judge = factory()
    if not callable(judge):
        raise SystemExit("--judge %s: %s() returned %r, not a judge" % (spec, attr, judge))
    return judge

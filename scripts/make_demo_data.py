#!/usr/bin/env python3
"""Write the page's two demo datasets (train + held-out eval) into www/demo/.

Run from anywhere: `python3 scripts/make_demo_data.py`. Standard library only,
fixed seed: the output is byte-for-byte the same on every run, and the committed
files are exactly its output.

sentiment-train.jsonl / sentiment-eval.jsonl  (chat format, "messages")
    The user turn holds an instruction and one short, unambiguous product or
    movie review; the assistant answers with exactly one word, `positive` or
    `negative`. SmolLM2-135M-Instruct already "understands" sentiment but
    answers with a sentence ("The sentiment of this review is positive."), so
    exact match starts near 0. Fine-tuning teaches the one-word format, which a
    few dozen LoRA steps pick up; the label is fully determined by the review,
    so the greedy answer either equals the label or it does not.

contacts-train.jsonl / contacts-eval.jsonl  (prompt/completion format)
    The prompt holds one sentence about a person (name, age, city, in varying
    order and wording) and asks for JSON; the completion is
    ` {"name": "...", "age": N, "city": "..."}` with the keys always in that
    order and the values copied verbatim from the sentence. The base model does
    not produce this exact object (it chats, reorders keys, adds fields or
    markdown), while the mapping is pure copy/extract with no world knowledge,
    which a small model learns quickly. Sentences come from 12 templates
    (every template appears in both splits) and eval people (full names) never
    occur in train, so a correct answer needs extraction, not recall.

Both evaluations give the model the prompt part, decode greedily, strip special
tokens and whitespace, and compare the text with the expected answer.
"""

import json
import os
import random

SEED = 20240611
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "www", "demo")

# ---------------------------------------------------------------- sentiment

SENTIMENT_INSTRUCTION = (
    "Is this review positive or negative? Answer with one word.\nReview: {review}"
)

POSITIVE = [
    "The battery lasts all week and it charges fast. Love it.",
    "Best pizza place in town, the crust was perfect.",
    "This movie made me laugh the whole time. Wonderful cast.",
    "Comfortable shoes, I walked ten miles with no pain.",
    "The headphones sound amazing and fit perfectly.",
    "Great service, the waiter was friendly and quick.",
    "A beautiful film with a moving story. I cried at the end.",
    "This blender works perfectly and is easy to clean.",
    "Excellent book, I could not put it down.",
    "The hotel room was spotless and the staff were lovely.",
    "Fast delivery and the quality is even better than expected.",
    "My kids adore this game. Worth every penny.",
    "The coffee maker is simple to use and the coffee tastes great.",
    "Brilliant acting and a clever plot. Highly recommended.",
    "This jacket keeps me warm and looks fantastic.",
    "The app is fast, clean and does exactly what I need.",
    "Delicious food and generous portions. We will be back.",
    "The chair is sturdy and very comfortable for long days.",
    "A fun, exciting thriller from start to finish.",
    "Setup took two minutes and the printer has worked flawlessly since.",
    "The soundtrack is gorgeous and the visuals are stunning.",
    "Great value for money, I bought a second one for my sister.",
    "The vacuum picks up everything and is surprisingly quiet.",
    "Sweet, charming and smart. My favorite movie this year.",
    "The tent kept us completely dry during a storm. Superb.",
    "Lovely soft sheets, I sleep so much better now.",
    "The guide was funny and knowledgeable. Best tour ever.",
    "This knife is razor sharp and feels great in the hand.",
    "Gripping documentary, I learned so much and enjoyed every minute.",
    "The keyboard feels wonderful to type on. Very happy.",
    "Fresh bread, friendly staff and a cozy atmosphere. Perfect.",
    "The sequel is even better than the original. Loved it.",
    "My plants are thriving with this lamp. Great purchase.",
    "The backpack is light, roomy and very well made.",
    "An uplifting show with a great ending. I smiled for hours.",
    "The camera takes sharp, beautiful photos even at night.",
    "Super helpful customer support, they fixed my issue in minutes.",
    "The mattress is firm but comfy and my back pain is gone.",
]

NEGATIVE = [
    "The battery died after two hours. Total waste of money.",
    "Cold pizza, rude staff and we waited an hour.",
    "This movie was boring and far too long. I fell asleep.",
    "The shoes fell apart after one week.",
    "The headphones crackle and hurt my ears. Returning them.",
    "Terrible service, the waiter ignored us all night.",
    "A dull film with a silly plot and wooden acting.",
    "The blender leaks and the motor burned out in a month.",
    "Awful book, the story goes nowhere. I gave up halfway.",
    "The hotel room was dirty and smelled of smoke.",
    "It arrived broken and the seller never replied.",
    "My kids got bored of this game in ten minutes. Not worth it.",
    "The coffee maker stopped working after three days.",
    "Bad acting and a predictable plot. Do not bother.",
    "This jacket ripped the first time I wore it.",
    "The app crashes constantly and deletes my notes.",
    "Bland food and tiny portions. We will not return.",
    "The chair wobbles and the cushion is rock hard.",
    "A slow, confusing thriller with no tension at all.",
    "The printer jams on every page. Worst purchase ever.",
    "The sound is muddy and the picture is blurry.",
    "Overpriced junk, it broke the day after the warranty ended.",
    "The vacuum is loud and barely picks up any dust.",
    "Cheesy, predictable and painfully unfunny. Skip it.",
    "The tent leaked on the first night and the poles snapped.",
    "Scratchy sheets that shrank after one wash. Disappointed.",
    "The guide was late and rude. Worst tour ever.",
    "This knife is dull and the handle cracked right away.",
    "A dull documentary that repeats itself for two hours.",
    "The keys stick and half of them stopped working. Avoid.",
    "Stale bread, grumpy staff and a dirty table. Never again.",
    "The sequel is a lazy mess that ruins the original.",
    "The lamp flickers and burned out within a week.",
    "The backpack strap tore on the first trip. Poor quality.",
    "A depressing show with a terrible ending. What a waste.",
    "The camera takes blurry photos and the lens fogs up.",
    "Useless customer support, nobody answered my emails.",
    "The mattress sags in the middle and my back hurts more.",
]


def sentiment_row(review, label):
    return {
        "messages": [
            {"role": "user", "content": SENTIMENT_INSTRUCTION.format(review=review)},
            {"role": "assistant", "content": label},
        ]
    }


def make_sentiment(rng, n_eval_per_label=6):
    pos = POSITIVE[:]
    neg = NEGATIVE[:]
    assert len(set(pos)) == len(pos) and len(set(neg)) == len(neg)
    assert not set(pos) & set(neg)
    rng.shuffle(pos)
    rng.shuffle(neg)
    ev = [(r, "positive") for r in pos[:n_eval_per_label]] + [
        (r, "negative") for r in neg[:n_eval_per_label]
    ]
    tr = [(r, "positive") for r in pos[n_eval_per_label:]] + [
        (r, "negative") for r in neg[n_eval_per_label:]
    ]
    rng.shuffle(ev)
    rng.shuffle(tr)
    return [sentiment_row(*x) for x in tr], [sentiment_row(*x) for x in ev]


# ---------------------------------------------------------------- contacts

CONTACTS_PROMPT = "Extract the contact as JSON.\nText: {text}\nJSON:"

FIRST = [
    "Maria", "James", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tom",
    "Sofia", "Daniel", "Fatima", "Lucas", "Hannah", "Ivan", "Grace", "Mateo",
    "Chloe", "Ahmed", "Nina", "Victor", "Elena", "Samuel", "Yuki", "Leo",
    "Zara", "Peter", "Amara", "Felix", "Ruth", "Diego", "Ingrid", "Kofi",
]
LAST = [
    "Lopez", "Smith", "Tanaka", "Haddad", "Fischer", "Silva", "Patel",
    "Brown", "Rossi", "Kim", "Khan", "Martin", "Novak", "Petrov", "Okafor",
    "Garcia", "Dubois", "Nguyen", "Jensen", "Moreau", "Costa", "Weber",
    "Sato", "Walsh", "Berg", "Mensah", "Horvat", "Lind",
]
CITIES = [
    "Porto", "Lyon", "Osaka", "Cairo", "Munich", "Lima", "Pune", "Leeds",
    "Turin", "Busan", "Lahore", "Quebec", "Prague", "Kazan", "Accra",
    "Seville", "Nantes", "Hanoi", "Aarhus", "Bergen", "Recife", "Graz",
    "Kyoto", "Cork", "Malmo", "Kumasi", "Split", "Denver", "Austin",
    "Perth", "Dublin", "Bologna",
]

# Each template uses {name}, {age}, {city} in a different order or wording.
TEMPLATES = [
    "{name}, {age}, lives in {city}.",
    "{name} is {age} years old and lives in {city}.",
    "Meet {name} from {city}, age {age}.",
    "{name} ({age}) moved to {city} last year.",
    "Based in {city}, {name} is {age}.",
    "Age {age}, {name} works in {city}.",
    "{city} is home to {name}, who is {age}.",
    "Our new member {name} is {age} and comes from {city}.",
    "Contact {name} in {city}. Age: {age}.",
    "At {age}, {name} still lives in {city}.",
    "Name: {name}. City: {city}. Age: {age}.",
    "{name} from {city} celebrated turning {age}.",
]


def contact_row(rng, name, template):
    age = rng.randint(18, 79)
    city = rng.choice(CITIES)
    text = template.format(name=name, age=age, city=city)
    answer = json.dumps({"name": name, "age": age, "city": city}, ensure_ascii=False)
    return {"prompt": CONTACTS_PROMPT.format(text=text), "completion": " " + answer}


def make_contacts(rng, n_train=64, n_eval=12):
    names = sorted({f"{f} {l}" for f in FIRST for l in LAST})
    rng.shuffle(names)
    names = names[: n_train + n_eval]  # distinct full names, none shared
    ev_names, tr_names = names[:n_eval], names[n_eval:]
    # Cycle through the templates so every template appears in train and eval.
    tr = [contact_row(rng, n, TEMPLATES[i % len(TEMPLATES)]) for i, n in enumerate(tr_names)]
    ev = [contact_row(rng, n, TEMPLATES[i % len(TEMPLATES)]) for i, n in enumerate(ev_names)]
    rng.shuffle(tr)
    rng.shuffle(ev)
    return tr, ev


# ---------------------------------------------------------------- output


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")


def prompt_of(row):
    if "messages" in row:
        return row["messages"][0]["content"]
    return row["prompt"]


def main():
    rng = random.Random(SEED)
    s_tr, s_ev = make_sentiment(rng)
    c_tr, c_ev = make_contacts(rng)
    for tr, ev in ((s_tr, s_ev), (c_tr, c_ev)):
        train_prompts = {prompt_of(r) for r in tr}
        assert len(train_prompts) == len(tr), "duplicate train prompt"
        assert len({prompt_of(r) for r in ev}) == len(ev), "duplicate eval prompt"
        assert not train_prompts & {prompt_of(r) for r in ev}, "eval prompt in train"
    os.makedirs(OUT, exist_ok=True)
    for name, rows in (
        ("sentiment-train.jsonl", s_tr),
        ("sentiment-eval.jsonl", s_ev),
        ("contacts-train.jsonl", c_tr),
        ("contacts-eval.jsonl", c_ev),
    ):
        path = os.path.normpath(os.path.join(OUT, name))
        write_jsonl(path, rows)
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main()

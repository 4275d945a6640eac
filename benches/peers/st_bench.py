"""Raw in-process sentence-transformers throughput: 2000 distinct English sentences, 8-40 words, batch 32, 2 threads."""
import os, random, time
import torch
from sentence_transformers import SentenceTransformer
torch.set_num_threads(2)
rng = random.Random(1234)
subj = ["The committee", "A young engineer", "Our small team", "The old farmer", "My neighbour", "The research group",
        "A quiet student", "The city council", "Every visitor", "The new manager", "Her brother", "The local bakery"]
verb = ["discussed", "reviewed", "painted", "rebuilt", "ignored", "celebrated", "measured", "described", "planned", "questioned"]
obj = ["the annual budget", "a broken bridge", "the morning schedule", "several rare birds", "an unusual proposal",
       "the quarterly report", "a long red fence", "the noisy machine", "their summer garden", "a complicated recipe"]
tail = ["before the heavy rain started", "while everyone else was asleep", "during the long winter evening",
        "after a surprisingly short meeting", "with great care and patience", "in front of the crowded station",
        "because nobody else wanted to", "despite the many objections raised", "near the river on the edge of town",
        "without asking for any help at all", "as the sun slowly went down", "for the third time this week"]
words = ("time year people way day man thing woman life child world school state family student group country problem "
         "hand part place case week company system program question work government number night point home water room "
         "mother area money story fact month lot right study book eye job word business issue side kind head house service "
         "friend father power hour game line end member law car city community name president team minute idea kid body").split()
seen, texts = set(), []
while len(texts) < 2000:
    s = f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)} {rng.choice(tail)}"
    n_target = rng.randint(8, 40)
    w = s.split()
    while len(w) < n_target:
        w += ["and", "the"] + [rng.choice(words)] if len(w) + 3 <= n_target else [rng.choice(words)]
    w = w[:n_target]
    t = " ".join(w) + "."
    if t not in seen:
        seen.add(t); texts.append(t)
lens = [len(t.split()) for t in texts]
print(f"n={len(texts)} words min={min(lens)} max={max(lens)} mean={sum(lens)/len(lens):.1f} threads={torch.get_num_threads()}")
m = SentenceTransformer(os.environ["ST_MODEL_DIR"], device="cpu")
m.encode(texts[:64], batch_size=32, normalize_embeddings=True)  # warm-up
for r in range(3):
    t0 = time.perf_counter()
    e = m.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
    dt = time.perf_counter() - t0
    print(f"run {r}: {len(texts)} texts in {dt:.2f}s -> {len(texts)/dt:.1f} texts/s  shape={e.shape}")

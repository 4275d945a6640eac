"""The official openai-python client against sis: default arguments (which ask for base64)."""
import json
import math
import sys

from openai import OpenAI

base_url, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url + "/v1", api_key="unused")
texts = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
response = client.embeddings.create(model=model, input=texts)
vectors = [d.embedding for d in response.data]
cos = lambda a, b: sum(x * y for x, y in zip(a, b))
short = client.embeddings.create(model=model, input="A man is eating food.", dimensions=128)
print(json.dumps({
    "count": len(vectors),
    "dims": [len(v) for v in vectors],
    "norms": [math.sqrt(cos(v, v)) for v in vectors],
    "similar": cos(vectors[0], vectors[1]),
    "different": cos(vectors[0], vectors[2]),
    "prompt_tokens": response.usage.prompt_tokens,
    "short_dims": len(short.data[0].embedding),
    "short_norm": math.sqrt(cos(short.data[0].embedding, short.data[0].embedding)),
}))

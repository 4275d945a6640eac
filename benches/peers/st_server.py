"""sentence-transformers OpenAI-style embeddings server (CPU, PyTorch)."""
import os
from typing import List, Union

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

torch.set_num_threads(2)

MODEL_DIR = os.environ.get("ST_MODEL_DIR")
if not MODEL_DIR:
    raise SystemExit("set ST_MODEL_DIR to the all-MiniLM-L6-v2 folder")
model = SentenceTransformer(MODEL_DIR, device="cpu")
model.eval()

app = FastAPI()


class EmbReq(BaseModel):
    model: str = "all-MiniLM-L6-v2"
    input: Union[str, List[str]]


@app.post("/v1/embeddings")
def embeddings(req: EmbReq):
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    # one encode per request
    vecs = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": v.tolist(), "index": i}
                 for i, v in enumerate(vecs)],
        "model": req.model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }


@app.get("/health")
def health():
    return {"status": "ok"}


if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", "8080")),
                workers=1, log_level="warning")

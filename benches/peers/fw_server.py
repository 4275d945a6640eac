"""faster-whisper OpenAI-style transcription server (CPU, CTranslate2 int8)."""
import io
import os
from typing import Optional

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import PlainTextResponse
from faster_whisper import WhisperModel

MODEL_DIR = os.environ.get("FW_MODEL_DIR")
if not MODEL_DIR:
    raise SystemExit("set FW_MODEL_DIR to the faster-whisper-tiny.en folder")
WORKERS = int(os.environ.get("WORKERS") or 1)
# Beam size when a request names none (its `beam_size` form field wins, as with sis).
BEAM = int(os.environ.get("BEAM") or 5)

model = WhisperModel(MODEL_DIR, device="cpu", compute_type="int8",
                     cpu_threads=2, num_workers=WORKERS)

app = FastAPI()


# Sync `def` endpoint: FastAPI runs it in its threadpool, so with
# num_workers=WORKERS up to WORKERS transcribe calls run in parallel.
@app.post("/v1/audio/transcriptions")
def transcriptions(file: UploadFile = File(...),
                   model_name: Optional[str] = Form(None, alias="model"),
                   response_format: Optional[str] = Form(None),
                   beam_size: Optional[int] = Form(None)):
    data = file.file.read()
    segments, _info = model.transcribe(io.BytesIO(data), language="en",
                                       beam_size=beam_size or BEAM, vad_filter=False)
    text = "".join(s.text for s in segments).strip()
    if response_format == "text":
        return PlainTextResponse(text)
    return {"text": text}


@app.get("/health")
def health():
    return {"status": "ok"}


if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", "8082")),
                workers=1, log_level="warning")

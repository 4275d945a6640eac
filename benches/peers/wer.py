"""Word error rate of OpenAI-style transcription servers on sentences spoken by espeak-ng.

    python3 benches/peers/wer.py [--model whisper-tiny.en] --beam 1 --beam 5 NAME=URL [NAME=URL ...]

Speaks each sentence (en-us, 140 words/min, half a second of silence around it, as tests/audio.rs does),
sends it to every server at every beam size and prints each server's word error rate over all of them:
word-level edit distance over the reference's words, after lower-casing and dropping punctuation. Needs
espeak-ng and sox; only the standard library.
"""
import argparse
import json
import os
import re
import subprocess
import tempfile
import urllib.request
import uuid

SENTENCES = [
    "The quick brown fox jumps over the lazy dog while the meeting starts at nine.",
    "Please send the quarterly report to the finance team before Friday afternoon.",
    "The weather tomorrow will be cloudy with a chance of rain in the northern mountains.",
    "She bought three apples, two pears and a loaf of bread at the market on Sunday.",
    "Our new office opens next Monday, and the parking garage is across the street.",
    "The doctor said to drink plenty of water and to rest for at least three days.",
    "A small boat drifted slowly toward the harbor as the sun went down behind the hills.",
    "Remember to water the plants on the balcony while we are away on holiday.",
    "The train to Boston leaves at half past seven from platform number four.",
    "He fixed the broken bicycle chain with a pair of pliers and some oil.",
    "Children in the park were flying bright red kites in the strong afternoon wind.",
    "The museum will display ancient coins, pottery and jewelry found near the river.",
    "Could you please turn down the music, because the baby is finally asleep.",
    "Our team won the final match by two goals after a very difficult second half.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
]


def words(text):
    return [w for w in re.split(r"[^\w']+", text.lower()) if w]


def distance(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[len(b)]


def transcribe(url, model, wav, beam):
    boundary = uuid.uuid4().hex
    fields = [("model", model), ("beam_size", str(beam))]
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields
    )
    with open(wav, "rb") as f:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode() + f.read() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/audio/transcriptions",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["text"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--beam", type=int, action="append", required=True)
    parser.add_argument("servers", nargs="+", help="NAME=URL")
    args = parser.parse_args()
    servers = [s.split("=", 1) for s in args.servers]
    with tempfile.TemporaryDirectory() as dir:
        clips = []
        for i, sentence in enumerate(SENTENCES):
            raw, wav = os.path.join(dir, f"{i}-raw.wav"), os.path.join(dir, f"{i}.wav")
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", raw, sentence], check=True)
            subprocess.run(["sox", raw, "-r", "16000", "-c", "1", wav, "pad", "0.5", "0.5"], check=True)
            clips.append((wav, sentence))
        total = sum(len(words(s)) for s in SENTENCES)
        for beam in args.beam:
            for name, url in servers:
                errors = sum(distance(words(s), words(transcribe(url, args.model, wav, beam))) for wav, s in clips)
                print(f"word error rate, {len(SENTENCES)} sentences, beam {beam}, {name:<6} {errors / total:.3f}")


if __name__ == "__main__":
    main()

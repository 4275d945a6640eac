#!/usr/bin/env python3
"""Speech as phones record it (AAC in an MP4 container, and raw ADTS AAC), made once and committed.

Neither sox nor any Debian tool CI installs writes AAC, so the clips the speech tests send as m4a and
aac are fixtures. Re-run (in the peers' venv with PyAV: `.peers/venv/bin/pip install av`) only when
the sentence changes; it must stay the same as SHORT in tests/audio.rs:

    .peers/venv/bin/python scripts/references/phone_audio.py
"""
import pathlib
import subprocess
import tempfile

import av

SHORT = "The weather today is sunny and warm. Please remember to bring your umbrella tomorrow."


def encode(wav: pathlib.Path, out: pathlib.Path, container: str) -> None:
    with av.open(str(wav)) as source, av.open(str(out), "w", format=container) as sink:
        stream = sink.add_stream("aac", rate=16000, layout="mono")
        stream.bit_rate = 32000
        for frame in source.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                sink.mux(packet)
        for packet in stream.encode(None):
            sink.mux(packet)


def main() -> None:
    fixtures = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures"
    with tempfile.TemporaryDirectory() as tmp:
        raw, wav = pathlib.Path(tmp, "raw.wav"), pathlib.Path(tmp, "short.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", raw, SHORT], check=True)
        subprocess.run(["sox", raw, "-r", "16000", wav, "pad", "0.5", "0.5"], check=True)
        encode(wav, fixtures / "short.m4a", "mp4")
        encode(wav, fixtures / "short.aac", "adts")
    for name in ("short.m4a", "short.aac"):
        print(name, (fixtures / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()

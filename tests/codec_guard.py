"""Runs `relay serve` with every codec context, decoder and encoder creation in the process
(and every container opened for reading, whose probing would open decoders) written to
$CODEC_LOG. Used by test_process.py to prove the relay never decodes or encodes."""

from __future__ import annotations

import os
import sys
import traceback

import av
import aiortc.codecs
import aiortc.codecs.g711
import aiortc.codecs.g722
import aiortc.codecs.opus
import aiortc.codecs.vpx
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender

LOG = open(os.environ["CODEC_LOG"], "a", buffering=1)


def record(what: str) -> None:
    LOG.write(f"{what}\n{''.join(traceback.format_stack(limit=6))}\n")


class GuardedCodecContext:
    """Stands in for av.CodecContext where aiortc looks it up."""

    @staticmethod
    def create(*args, **kwargs):
        record(f"CodecContext.create{args}")
        return av.codec.context.CodecContext.create(*args, **kwargs)


def guarded(name, real):
    def wrapper(*args, **kwargs):
        record(f"{name}{args}")
        return real(*args, **kwargs)
    return wrapper


real_open = av.open


def guarded_open(file, mode="r", *args, **kwargs):
    # Opening a container for reading probes its streams, which opens decoders.
    if mode == "r":
        record(f"av.open({file!r}, 'r')")
    return real_open(file, mode, *args, **kwargs)


av.open = guarded_open
av.CodecContext = GuardedCodecContext
for module in (aiortc.codecs.opus, aiortc.codecs.vpx, aiortc.codecs.g711, aiortc.codecs.g722):
    module.CodecContext = GuardedCodecContext
aiortc.codecs.get_decoder = aiortc.rtcrtpreceiver.get_decoder = guarded("get_decoder", aiortc.codecs.get_decoder)
aiortc.codecs.get_encoder = aiortc.rtcrtpsender.get_encoder = guarded("get_encoder", aiortc.codecs.get_encoder)

if __name__ == "__main__":
    if sys.argv[1:] == ["selftest"]:
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        aiortc.rtcrtpreceiver.get_decoder(RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=96))
        import io

        try:
            av.open(io.BytesIO(b"not media"), "r")
        except av.FFmpegError:
            pass
        sys.exit(0)
    from relay.cli import main

    sys.exit(main(sys.argv[1:]))

"""Contracts of the media layer: what probing a video tells us, and how to decode it."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The YUV-to-RGB matrices frames are converted with, named as ffmpeg's scale filter names them.
YuvMatrix = Literal["bt601", "bt709", "bt2020", "fcc", "smpte240m"]
YuvRange = Literal["limited", "full"]


class VideoProbe(BaseModel):
    """Facts about one video file, read by ffprobe without decoding any frame."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="Path of the video file, as given to the prober.")
    size_bytes: int = Field(ge=0, description="File size in bytes.")
    duration_s: float = Field(gt=0, description="Duration of the video stream in seconds.")
    fps: float = Field(gt=0, description="Average frame rate (frames per second).")
    variable_fps: bool = Field(
        description="True when the stream's base rate (r_frame_rate) and average rate differ by more than 1%."
    )
    width: int = Field(gt=0, description="Display width in pixels, after applying `rotation`.")
    height: int = Field(gt=0, description="Display height in pixels, after applying `rotation`.")
    coded_width: int = Field(gt=0, description="Width of the frames as stored in the stream.")
    coded_height: int = Field(gt=0, description="Height of the frames as stored in the stream.")
    rotation: Literal[0, 90, 180, 270] = Field(
        description="Clockwise rotation in degrees that turns stored frames upright, as in the legacy `rotate` tag "
        "(a phone's portrait video is usually 90)."
    )
    codec: str = Field(description="ffprobe codec name of the video stream, e.g. 'h264'.")
    pix_fmt: str = Field(description="Pixel format of the video stream, e.g. 'yuv420p'.")
    num_frames: int | None = Field(
        ge=0, description="Frame count from the container when it has one, else round(duration_s * fps)."
    )
    has_audio: bool = Field(description="True when the file has at least one audio stream.")
    # The colour tags as ffprobe names them; None where the stream leaves them unspecified. Frames follow the
    # matrix and range; primaries and transfer are recorded only (no gamut mapping or HDR tone mapping).
    color_space: str | None = Field(
        default=None, description="YUV matrix tag, e.g. 'bt709', 'smpte170m' or 'bt470bg' (BT.601), 'bt2020nc'."
    )
    color_range: str | None = Field(default=None, description="'tv' (limited, 16-235) or 'pc' (full, 0-255).")
    color_primaries: str | None = Field(default=None, description="Primaries tag, e.g. 'bt709', 'bt2020'.")
    color_transfer: str | None = Field(
        default=None, description="Transfer tag, e.g. 'bt709', 'smpte2084' (PQ), 'arib-std-b67' (HLG)."
    )


class DecodeConfig(BaseModel):
    """How frames are decoded for the pipeline: rate, output size, crop mode and CPU budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fps: float | None = Field(
        default=None,
        gt=0,
        le=240,
        description="Output frame rate; None keeps the source rate (variable-rate sources are resampled to their "
        "average rate).",
    )
    size: int = Field(
        default=512, ge=16, le=4096, multiple_of=2, description="Output frames are size x size pixels (even: 4:2:0)."
    )
    crop: Literal["center", "pad"] = Field(
        default="center",
        description="'center': scale the short side to `size` and crop the centre; 'pad': fit the long side and "
        "letterbox with black.",
    )
    max_side: int = Field(
        default=1920, ge=16, le=8192, multiple_of=2,
        description="With perception on, frames keep the source's aspect ratio and resolution (the face crop is "
        "cut from them); a source whose longer side exceeds this is scaled down to it (memory bound).",
    )
    threads: int = Field(default=1, ge=1, le=64, description="ffmpeg threads (decoder and filters) per worker.")
    max_source_pixels: int = Field(
        default=4096 * 4096, ge=1, description="Sources with more stored pixels per frame are rejected as bad data."
    )
    jpeg_quality: int = Field(default=95, ge=1, le=100, description="JPEG quality of frames written to shards.")

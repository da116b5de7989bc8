# sft-recipes on CUDA: the image runs `sft-recipes <command>`; see recipes/README.md for build and run lines.
# torch 2.13.0 is the version CI tests (as the CPU build) and sits inside pyproject's torch range (>=2.8: below it TRL's
# fused LM head upcasts, transformers drops fused AdamW and its FSDP2 path raises). CUDA 12.6 runs on drivers >= 560
# and covers V100 to H100/H200 (sm_70-sm_90); Blackwell needs a CUDA 13 tag of the same torch. The devel variant
# carries nvcc, which flash-attn (when no prebuilt wheel matches) and DeepSpeed's JIT-compiled ops need.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-devel

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAX_JOBS=4 \
    HF_HOME=/cache/huggingface

WORKDIR /app

# Dependencies first, from pyproject and an empty package, so editing code does not rebuild this layer.
# The constraints file stops any dependency from swapping out the image's CUDA torch (and breaking torchvision);
# flash-attn compiles against that torch, so it alone is built without isolation, after its build tools.
# The empty README.md only satisfies the readme that pyproject names; its text is not needed in the image.
COPY pyproject.toml ./
RUN mkdir sft_recipes && touch sft_recipes/__init__.py README.md \
    && pip list --format=freeze | grep -E '^(torch|torchvision)==' > /tmp/pins.txt \
    && pip install -c /tmp/pins.txt ".[quantization,deepspeed,tracking,vision,eval]" \
    && pip install "setuptools>=68" wheel packaging ninja psutil \
    && pip install --no-build-isolation -c /tmp/pins.txt ".[flash-attn]"

COPY sft_recipes/ ./sft_recipes/
RUN pip install --no-deps --no-build-isolation .

# The package already carries the accelerate configs and the demo recipe; these keep the repo's paths working in
# /app (recipes/<model>/<method>.yaml, accelerate_configs/<name>.yaml; both hold links into sft_recipes/).
COPY recipes/ ./recipes/
COPY accelerate_configs/ ./accelerate_configs/

# Model and dataset downloads land in a volume, so they survive the container; the token comes at run time
# (docker run -e HF_TOKEN), never at build time.
VOLUME /cache/huggingface
ENTRYPOINT ["sft-recipes"]
CMD ["--help"]

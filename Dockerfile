# sft-recipes on CUDA: the image runs `sft-recipes <command>`; see recipes/README.md for build and run lines.
# torch 2.7.1 sits inside pyproject's torch range (>=2.6,<2.14); the devel variant carries nvcc, which flash-attn
# (when no prebuilt wheel matches) and DeepSpeed's JIT-compiled ops need.
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-devel

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

COPY recipes/ ./recipes/
COPY accelerate_configs/ ./accelerate_configs/

# Model and dataset downloads land in a volume, so they survive the container; the token comes at run time
# (docker run -e HF_TOKEN), never at build time.
VOLUME /cache/huggingface
ENTRYPOINT ["sft-recipes"]
CMD ["--help"]

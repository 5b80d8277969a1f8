"""Pinned Hugging Face deep learning containers (DLCs), by region; pass ``image_uri=`` to use another.

The training image brings torch, transformers and accelerate; the job's ``requirements.txt`` adds the
few packages the SDK needs on top. The inference image runs the toolkit that loads ``code/inference.py``;
the TGI image (Text Generation Inference 3.0.1, the Hugging Face LLM container) serves a merged model.
"""

from __future__ import annotations

from ..errors import ConfigError

TRAINING_IMAGE = "huggingface-pytorch-training:2.3.0-transformers4.48.0-gpu-py311-cu121-ubuntu20.04"
INFERENCE_IMAGE = "huggingface-pytorch-inference:2.3.0-transformers4.48.0-gpu-py311-cu121-ubuntu22.04"
TGI_IMAGE = "huggingface-pytorch-tgi-inference:2.4.0-tgi3.0.1-gpu-py311-cu124-ubuntu22.04-v2.1"

#: The account that publishes the DLCs in each region (most regions share one).
DLC_ACCOUNTS: dict[str, str] = {
    **{region: "763104351884" for region in (
        "ap-northeast-1", "ap-northeast-2", "ap-south-1", "ap-southeast-1", "ap-southeast-2", "ca-central-1",
        "eu-central-1", "eu-north-1", "eu-west-1", "eu-west-2", "eu-west-3", "sa-east-1", "us-east-1",
        "us-east-2", "us-west-1", "us-west-2")},
    "af-south-1": "626614931356", "ap-east-1": "871362719292", "ap-northeast-3": "364406365360",
    "eu-south-1": "692866216735", "me-south-1": "217643126080", "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807", "us-gov-west-1": "442386744353",
}

#: What the SDK needs inside the containers on top of the DLC (which has torch and transformers).
CONTAINER_REQUIREMENTS = ["pydantic>=2.6", "httpx>=0.27", "tenacity>=8.2", "peft>=0.13", "safetensors>=0.4"]


def image_uri(image: str, region: str) -> str:
    """The full ECR URI of a pinned ``image`` in ``region``."""
    account = DLC_ACCOUNTS.get(region)
    if account is None:
        raise ConfigError(f"no pinned Hugging Face container for region {region!r}; pass image_uri= (see "
                          "https://github.com/aws/deep-learning-containers/blob/master/available_images.md)")
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/{image}"

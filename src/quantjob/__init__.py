"""quantjob: data-parallel, layer-wise post-training quantization of LLMs on Kubernetes."""

__version__ = "0.1.0"

"""Search spaces: ops (registered by name), genotypes and network builders."""
from .errors import HwcostError, UnknownNameError
from .genotypes import BUILTIN as BUILTIN_GENOTYPES, Genotype, load_genotype, parse_genotype, random_genotype
from .nb201_arch import NB201_OPS, Nb201Arch
from .registry import OpSpec, Space, build_op, get_space, list_spaces, register_op, register_space
from .networks import (CifarNetConfig, ImageNetConfig, NetworkCIFAR, NetworkImageNet,
                       build_network, network_config, NETWORKS)
from .nb201 import Nb201NetConfig, Nb201Network

__all__ = [
    "HwcostError", "UnknownNameError", "BUILTIN_GENOTYPES", "Genotype", "load_genotype",
    "parse_genotype", "random_genotype", "NB201_OPS", "Nb201Arch", "OpSpec", "Space", "build_op", "get_space",
    "list_spaces", "register_op", "register_space", "CifarNetConfig", "ImageNetConfig",
    "NetworkCIFAR", "NetworkImageNet", "build_network", "network_config", "NETWORKS",
    "Nb201NetConfig", "Nb201Network",
]

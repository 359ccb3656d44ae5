"""The model: the frozen backbone (``backbones``, ``inception``), the attention-hash network
(``network``), packed codes (``codes``), checkpoints, and the one encoder path from uint8
scenes to codes (``encoder``, ``network_input``, ``precision``, ``orientations``).

Imports only the core modules: every other layer may use it."""

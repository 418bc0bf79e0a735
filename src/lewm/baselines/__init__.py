"""Other world models behind lewm's world-model protocol: PLDM and DINO-WM-style."""

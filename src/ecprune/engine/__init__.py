"""The data path's engine: batching, the forward tape, the statistics pass, the output
sensitivities and the masked weights it reads."""

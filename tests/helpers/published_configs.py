"""Public config.json values of real models and the parameter counts their model cards publish, for the memory
planner's tests."""

PUBLISHED = {
    "Qwen2.5-0.5B": ("qwen2", 151936, 896, 24, 14, 2, 4864, True, 494_032_768),
    "Qwen2.5-1.5B": ("qwen2", 151936, 1536, 28, 12, 2, 8960, True, 1_543_714_304),
    "Llama-3.1-8B": ("llama", 128256, 4096, 32, 32, 8, 14336, False, 8_030_261_248),
    "Mistral-7B-v0.1": ("mistral", 32000, 4096, 32, 32, 8, 14336, False, 7_241_732_096),
    "gemma-2-2b": ("gemma2", 256000, 2304, 26, 8, 4, 9216, True, 2_614_341_888),
}


def published_config(name: str) -> dict:
    model_type, vocab, hidden, layers, heads, kv_heads, intermediate, tied, _ = PUBLISHED[name]
    config = {"model_type": model_type, "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers}
    config |= {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": intermediate}
    return config | {"tie_word_embeddings": tied} | ({"head_dim": 256} if model_type == "gemma2" else {})

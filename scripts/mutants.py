"""The bugs scripts/mutation_check.py plants: one realistic one-line bug each, the tests that should catch it.

To add one: a unique id, the file, its exact original snippet (unique in that file; widen it until it is), the
replacement, the test files (by name: found anywhere under tests/) and a -k expression that keeps the run short.
`pending` names the work whose tests should kill a survivor that lives in code another change is rewriting.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    k: str | None = None
    bug: str = ""
    pending: str | None = None


MERGE_WORK = "the merge work (issue 10 item 6: merge fidelity), whose tests are not on main yet"

LOADER = "sft_recipes/model/loading.py"
KIND = "sft_recipes/model/kind.py"
TOKENIZER = "sft_recipes/model/tokenizer.py"
LORA = "sft_recipes/model/lora.py"
QUANT = "sft_recipes/model/quantization.py"
MERGE = "sft_recipes/merge.py"
ROWS = "sft_recipes/data/rows.py"
FORMATS = "sft_recipes/data/formats.py"
FIDELITY = "sft_recipes/template_fidelity.py"
RUN_DIR = "sft_recipes/run_dir.py"
TRAIN = "sft_recipes/train.py"
CONFIG = "sft_recipes/config.py"


# Each entry: id, file / original / replacement / tests, -k / the bug[, pending].
# fmt: off
MUTANTS: tuple[Mutant, ...] = (
    # the loader (model package)
    Mutant('loader-use-cache-on', LOADER,
        'model.config.use_cache = False',
        'model.config.use_cache = True',
        ('test_packing.py',), 'plain_forward',
        'use_cache left on in training (breaks packed-document isolation and gradient checkpointing)'),
    Mutant('loader-resize-no-multiple-of-8', LOADER,
        'model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)',
        'model.resize_token_embeddings(len(tokenizer))',
        ('test_train.py',), 'multiple_of_8',
        'grown embeddings not padded to a multiple of 8'),
    Mutant('loader-no-resize', LOADER,
        '    if len(tokenizer) > embeddings:\n',
        '    if len(tokenizer) > embeddings + 1:\n',
        ('test_train.py',), 'multiple_of_8',
        'one added token left outside the embedding matrix'),
    Mutant('loader-rope-floor-factor', LOADER,
        'factor = math.ceil(max_length / context)',
        'factor = max_length // context',
        ('test_model.py',), 'rope',
        'RoPE factor rounded down: the longest rows exceed the scaled context'),
    Mutant('loader-rope-at-context', LOADER,
        'max_length <= context:',
        'max_length < context:',
        ('test_model.py',), 'rope',
        'RoPE scaled when max_length equals the context'),
    Mutant('kind-architecture-ignored', KIND,
        'architectures[0].endswith("ForCausalLM")',
        'architectures[0].endswith("ForCausalLMHead")',
        ('test_model.py',), 'both_maps',
        'a text-only Gemma-3 checkpoint loaded as a VLM'),
    Mutant('kind-dtype-ignores-checkpoint', KIND,
        'return DTYPES[saved] if saved in DTYPES else compute_dtype_name(training_args)',
        'return compute_dtype_name(training_args)',
        ('test_model.py',), 'auto_dtype',
        "dtype auto ignores the checkpoint's dtype"),
    Mutant('quant-fp4', QUANT,
        'bnb_4bit_quant_type=model_args.bnb_4bit_quant_type,',
        'bnb_4bit_quant_type="fp4",',
        ('test_model.py',), 'qlora_config',
        'QLoRA quantizes to fp4 whatever the recipe says'),
    Mutant('quant-device-map-rank0', QUANT,
        'return {"": int(os.environ.get("LOCAL_RANK", "0"))}',
        'return {"": 0}',
        ('test_model.py',), 'this_ranks_gpu',
        'every DDP rank loads its quantized model onto GPU 0'),
    Mutant('tokenizer-left-padding', TOKENIZER,
        'tokenizer.padding_side = "right"',
        'tokenizer.padding_side = "left"',
        ('test_masks.py', 'test_vlm_padding.py'), 'collation or pad_on_the_right',
        'left padding for training (the vision collator pads with the tokenizer)'),
    Mutant('tokenizer-pad-skips-reserved', TOKENIZER,
        'if policy == "auto" and reserved is not None:',
        'if policy == "add" and reserved is not None:',
        ('test_model.py',), 'pad_policy',
        'a reserved pad token (Llama 3.1) ignored in favour of eos'),
    Mutant('lora-vision-tower-adapted', LORA,
        'return [n for n in linear if any(n.startswith(f"{layers}.") for layers in lists)]',
        'return linear',
        ('test_lora.py',), 'vision_tower or every_decoder',
        "LoRA adapts the VLM's vision tower and projector"),
    # merge
    Mutant('merge-tolerance-1e2', MERGE,
        'FP32_TOLERANCE = 1e-4',
        'FP32_TOLERANCE = 1e2',
        ('test_train.py',), 'merged',
        'a merge tolerance of 1e2: a merge that changed the function passes its check', MERGE_WORK),
    Mutant('merge-no-vocab-resize', MERGE,
        'if vocab and vocab != embeddings:',
        'if vocab and vocab < embeddings:',
        ('test_train.py',), 'merged',
        'merge skips the vocabulary resize of an adapter trained with added tokens', MERGE_WORK),
    Mutant('merge-no-op-adapter-accepted', MERGE,
        'if effect == 0.0:',
        'if effect < 0.0:',
        ('test_train.py',), 'merged',
        'an adapter that changes nothing (all-zero B) is merged without a word', MERGE_WORK),
    Mutant('merge-use-cache-off', MERGE,
        'merged.config.use_cache = True',
        'merged.config.use_cache = False',
        ('test_train.py',), 'merged',
        'the merged model is saved with use_cache off'),
    Mutant('merge-bf16-limit-loose', MERGE,
        'max(FP32_TOLERANCE, 0.05 * effect)',
        'max(FP32_TOLERANCE, 0.5 * effect)',
        ('test_train.py',), 'merged',
        "a 16-bit merge may drift by half the adapter's effect", MERGE_WORK),
    # data conversion
    Mutant('rows-gpt-is-user', ROWS,
        '"gpt": "assistant",',
        '"gpt": "user",',
        ('test_data.py',), 'sharegpt',
        'ShareGPT gpt turns become user turns'),
    Mutant('rows-system-column-dropped', ROWS,
        'if isinstance(system, str) and system.strip():  # LLaMA-Factory',
        'if isinstance(system, str) and not system.strip():  # LLaMA-Factory',
        ('test_data.py',), 'sharegpt',
        'the ShareGPT system column is dropped'),
    Mutant('rows-alpaca-input-dropped', ROWS,
        'user = f"{instruction}\\n\\n{extra}"',
        'user = instruction',
        ('test_data.py',), 'alpaca',
        "Alpaca's input column is dropped from the prompt"),
    Mutant('rows-image-path-not-resolved', ROWS,
        'candidate = os.path.join(base_dir, path)',
        'candidate = path',
        ('test_data.py',), 'vision_rows',
        'relative image paths resolved against the working directory instead of the data file'),
    Mutant('rows-system-anywhere', ROWS,
        'elif role == "system" and (i > 0 or not system_allowed):',
        'elif role == "system" and (i > 1 or not system_allowed):',
        ('test_validate_bad_inputs.py',), 'system-not-first',
        'a system message second in the conversation is accepted'),
    Mutant('rows-empty-assistant-accepted', ROWS,
        'elif role == "assistant" and not content.strip() and not message.get("tool_calls"):',
        'elif role == "assistant" and not content and not message.get("tool_calls"):',
        ('test_data.py',), 'bad_rows',
        'a whitespace-only assistant turn is trained'),
    Mutant('formats-messages-before-prompt-completion', FORMATS,
        'if {"prompt", "completion"} <= cols:\n'
        '        return "prompt_completion"\n'
        '    if "messages" in cols:',
        'if "messages" in cols:\n'
        '        return "messages"\n'
        '    if {"prompt", "completion"} <= cols:\n'
        '        return "prompt_completion"\n'
        '    if "messages" in cols:',
        ('test_data.py',), 'precedence',
        "messages detected before prompt-completion (TRL's precedence reversed)"),
    # templates
    Mutant('fidelity-refusal-ignored', FIDELITY,
        'if inference_error and training_error:\n            continue',
        'if inference_error or training_error:\n            continue',
        ('test_chat_families.py',), 'refusing',
        'a template that refuses what the other renders is no difference'),
    Mutant('fidelity-own-markers-ignored', FIDELITY,
        'if has_generation_markers(own):\n        return own',
        'if has_generation_markers(own) and False:\n        return own',
        ('test_chat_families.py', 'test_training_template.py'), 'renders_like or own_generation_markers',
        "a marked template sent to TRL's patcher, which refuses a tool template SFTTrainer trains as it is"),
    Mutant('fidelity-first-difference-off-by-one', FIDELITY,
        'return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))',
        'return next((i + 1 for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))',
        ('test_chat_families.py',), 'offset',
        'the first differing character reported one too far'),
    # resume and the run directory
    Mutant('run-dir-unmarked-complete', RUN_DIR,
        'if (path / COMPLETE_MARKER).exists()]',
        'if path.is_dir()]',
        ('test_run_dir.py',), None,
        'a checkpoint cut off by a crash counts as complete'),
    Mutant('run-dir-string-step-order', RUN_DIR,
        'found.append((int(match.group(1)), path))',
        'found.append((match.group(1), path))',
        ('test_run_dir.py',), None,
        'checkpoint-9 sorts after checkpoint-10'),
    Mutant('run-dir-resume-oldest', RUN_DIR,
        'return str(done[-1]) if done else None',
        'return str(done[0]) if done else None',
        ('test_run_dir.py',), None,
        'resume from the oldest complete checkpoint'),
    Mutant('run-dir-finished-retrained', RUN_DIR,
        'if finished(output_dir) and not requested:',
        'if finished(output_dir) and requested:',
        ('test_run_dir.py',), None,
        'a finished run is trained again without overwrite'),
    Mutant('run-dir-rotation-drops-complete-first', RUN_DIR,
        'key=lambda p: (p / COMPLETE_MARKER).exists())',
        'key=lambda p: not (p / COMPLETE_MARKER).exists())',
        ('test_run_dir.py',), None,
        'save_total_limit deletes complete checkpoints before cut-off ones'),
    Mutant('run-dir-lock-holder-ignores-live-pid', RUN_DIR,
        '    except Timeout:\n        return pid',
        '    except Timeout:\n        return None',
        ('test_run_dir.py',), None,
        'the lock ignoring a live pid: a live holder is reported as none'),
    Mutant('run-dir-alive-never', RUN_DIR,
        '        return False\n    except PermissionError:\n        return True\n    return True',
        '        return False\n    except PermissionError:\n        return True\n    return False',
        ('test_run_dir.py', 'test_validate_bad_inputs.py'), 'lock or live-run',
        'every recorded pid taken for dead'),
    Mutant('run-dir-lock-per-node', RUN_DIR,
        'if int(os.environ.get("RANK", "0")) != 0:\n        yield',
        'if int(os.environ.get("LOCAL_RANK", "0")) != 0:\n        yield',
        ('test_run_dir.py',), None,
        "each node's local rank 0 takes the output_dir lock (a shared filesystem then refuses the second node)"),
    Mutant('run-dir-transformers-rotates', RUN_DIR,
        'limit, training_args.save_total_limit = training_args.save_total_limit, None',
        'limit = training_args.save_total_limit',
        ('test_resume.py',), 'between_a_save_and_its_marker',
        'transformers rotates before the marker: a kill can leave no complete checkpoint'),
    Mutant('run-dir-summary-not-atomic', RUN_DIR,
        'os.replace(temporary, out / SUMMARY)',
        'shutil.copy(temporary, out / SUMMARY)',
        ('test_run_dir.py',), 'run_record',
        "run_summary.json written in place: a crash leaves a partial 'finished' marker and a .partial file"),
    # train: fast defaults and finalize
    Mutant('finalize-pad-in-eos', TRAIN,
        '    generation.eos_token_id = eos_ids\n',
        '    generation.eos_token_id = eos_ids + [tokenizer.pad_token_id]\n',
        ('test_train.py',), 'reloads',
        "pad added to generation_config's EOS ids: generate() stops on padding"),
    Mutant('finalize-use-cache-off', TRAIN,
        '        config["use_cache"] = True\n',
        '        config["use_cache"] = False\n',
        ('test_train.py',), 'reloads',
        'the saved model keeps use_cache off'),
    Mutant('finalize-vlm-use-cache-off', TRAIN,
        'config["text_config"]["use_cache"] = True',
        'config["text_config"]["use_cache"] = False',
        ('test_finalize.py',), None,
        'VLM use_cache not restored after training (text_config)'),
    Mutant('finalize-eos-not-added', TRAIN,
        '        eos_ids.insert(0, tokenizer.eos_token_id)\n',
        '        pass\n',
        ('test_finalize.py',), None,
        "the tokenizer's end of turn missing from generation_config's EOS ids"),
    Mutant('fast-defaults-decision-not-recorded', TRAIN,
        'recipe.raw["activation_checkpointing"] = on',
        'recipe.raw["activation_checkpointing"] = None',
        ('test_fast_defaults.py',), 'recipe_always or gpu_that_fits',
        'recipe.yaml does not record the checkpointing decision'),
    # config parsing
    Mutant('config-yaml-line-off-by-one', CONFIG,
        'for number, line in enumerate(Path(path).read_text().splitlines(), start=1):',
        'for number, line in enumerate(Path(path).read_text().splitlines()):',
        ('test_cli.py',), 'unknown_key',
        'problems point one line above the key'),
    Mutant('config-env-secret-logged', CONFIG,
        '("<redacted>" if SECRET_PATTERN.search(str(k)) else v)',
        'v',
        ('test_security.py',), 'secrets',
        'a secret set under env: is written into recipe.yaml'),
    Mutant('config-hub-token-kept', CONFIG,
        '        training.hub_token = None\n',
        '        pass\n',
        ('test_security.py',), 'secrets',
        'the hub token stays on the args, pickled into training_args.bin'),
    Mutant('config-int-for-float-refused', CONFIG,
        'if kind is float and isinstance(value, int) and not isinstance(value, bool):',
        'if kind is float and isinstance(value, float):',
        ('test_recipes.py',), 'parses_strictly',
        'an integer for a float key (learning_rate: 1) is refused'),
    Mutant('config-string-float-silent', CONFIG,
        'severity="warning",\n                    )\n                )\n                continue',
        'severity="warning",\n'
        '                    )\n'
        '                ) if False else None\n'
        '                continue',
        ('test_validate.py',), 'yaml-1e-5',
        "YAML's string 1e-5 converted silently, without the warning"),
    Mutant('config-no-cpu-fallback', CONFIG,
        'if "use_cpu" not in explicit and not _has_accelerator():',
        'if "use_cpu" not in explicit and _has_accelerator():',
        ('test_validate.py',), 'explicit_bf16',
        'a machine without an accelerator is not given use_cpu'),
    Mutant('config-unknown-flag-accepted', CONFIG,
        'if arg not in hints and arg.removeprefix("no_") not in hints and arg not in ("help", "help-all"):',
        'if arg not in hints and arg.removeprefix("no_") not in hints and arg.startswith("help"):',
        ('test_validate_bad_inputs.py',), 'misspelled-flag',
        'a misspelled command-line flag is accepted'),
)
# fmt: on

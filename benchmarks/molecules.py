"""Graph VAE speed and memory: training molecules/s, decoding valid molecules/s, peak memory.

    python benchmarks/molecules.py [--ckpt RUN_OR_CKPT] [--device cpu|cuda] [--decode-batch 1000]
        [--decoder graph|sequence] [--threads N] [--profile]
    python benchmarks/molecules.py --round-trip [--test PATH] [--limit N]

Without ``--ckpt`` the model is untrained, and untrained decoders stop early (small molecules), so
decoding looks faster than it is: pass a trained checkpoint (e.g. from
``medgen train experiment=smiles_graph_vae_quick``). The reference row is RDKit parsing and
canonicalizing the same SMILES, measured in the same run. ``--profile`` prints the operators
that dominate one training step (torch profiler). ``--round-trip`` measures graph ->
molecule -> canonical SMILES on the MOSES test set and lists the kinds of mismatches.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections import Counter

import torch


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build(args):
    from medgen.molecules.data import GraphDataModule
    from medgen.molecules.module import GraphVAEModule

    dm = GraphDataModule(
        path=args.data, batch_size=args.train_batch, val_fraction=0.0,
        bucket_by_size=not args.no_bucket,
    )  # fmt: skip
    dm.setup()
    if args.ckpt:
        module = GraphVAEModule.from_checkpoint(args.ckpt)
        dm.use_vocabulary(module.vocab.tokens)
    else:
        from medgen.molecules.masks import ChemistryMasks

        network = {"decoder": args.decoder}
        if args.hidden:  # e.g. the MOSES recipe: --hidden 256 (latent 56, pair 64)
            network.update(hidden_dim=args.hidden, latent_dim=56, pair_dim=64)
        module = GraphVAEModule(network=network)
        masks = ChemistryMasks.learn_from(dm.train_set, len(dm.vocabulary))
        module.build(dm.vocabulary.tokens, dm.max_atoms_seen, masks.to_plain(dm.vocabulary.tokens))
    return dm, module


def bench_train(dm, module, device: str, steps: int) -> float:
    vae = module.vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    batches = iter(dm.train_dataloader())
    done, elapsed = 0, 0.0
    for step in range(steps + 1):
        batch = next(batches).to(device)
        t0 = time.perf_counter()
        out = vae(batch)
        loss = out["recon"] + 0.1 * out["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step:  # the first step warms up
            elapsed += time.perf_counter() - t0
            done += batch.atoms.shape[0]
    return done / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="trained checkpoint or run dir")
    parser.add_argument("--data", default=None, help="SMILES source (default: embedded sample)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--decode-batch", type=int, default=1000)
    parser.add_argument("--decode-rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--processes",
        type=int,
        default=2,
        help="also decode in this many 1-thread processes (needs --ckpt; 1: off)",
    )
    parser.add_argument("--decoder", default="graph", choices=["graph", "sequence"],
                        help="untrained model's decoder (ignored with --ckpt)")  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="top operators of a train step")
    parser.add_argument("--no-bucket", action="store_true", help="train on randomly mixed sizes")
    parser.add_argument("--hidden", type=int, default=None, help="untrained model's hidden size")
    parser.add_argument("--round-trip", action="store_true")
    parser.add_argument("--test", default=None, help="round trip: SMILES file (default MOSES test)")
    parser.add_argument("--limit", type=int, default=None, help="round trip: first N molecules")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.round_trip:
        return round_trip(args)

    from medgen.molecules.graph import batch_to_smiles
    from medgen.molecules.sampling import draw_noise, sample_smiles

    dev = args.device
    dm, module = build(args)
    vae, vocab = module.vae, module.vocab
    rows = []
    train_rate = bench_train(dm, module, dev, args.train_steps)
    rows.append((f"train molecules/s (batch {args.train_batch})", train_rate, peak_mb(dev)))
    bound = getattr(vae.decoder, "ring_bound", 0)
    if bound:  # what the ring bound costs at teacher forcing
        vae.decoder.ring_bound = 0
        free_rate = bench_train(dm, module, dev, args.train_steps)
        vae.decoder.ring_bound = bound
        rows.append((f"  the same without the ring bound ({bound})", free_rate, peak_mb(dev)))
    if args.profile:
        profile_step(dm, module, dev)

    vae.eval()
    sample_smiles(vae, vocab, args.decode_batch, seed=99)  # warm-up (thread pools, allocator)
    n = args.decode_batch
    graph_time = smiles_time = free_time = 0.0
    smiles: list = []
    free: list = []
    atoms = []

    def decode_round(r: int) -> tuple[float, float, list, float]:
        t0 = time.perf_counter()
        # per-molecule generators: part of the cost
        z, u = draw_noise(vae, range(n), seed=r, device=dev)
        with torch.no_grad():
            graphs = vae.sample(z, temperature=1.0, uniforms=u)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        out = batch_to_smiles(graphs, vocab)
        return t1 - t0, time.perf_counter() - t0, out, graphs.n_atoms.float().mean().item()

    for r in range(args.decode_rounds):
        g_s, s_s, out, mean_atoms = decode_round(r)
        graph_time, smiles_time = graph_time + g_s, smiles_time + s_s
        smiles += out
        atoms.append(mean_atoms)
        if bound:  # the same round without the ring bound, interleaved: what the bound costs
            vae.decoder.ring_bound = 0
            _, s_s, out, _ = decode_round(r)
            vae.decoder.ring_bound = bound
            free_time += s_s
            free += out
    from medgen.chem.metrics import fraction_valid

    valid = fraction_valid(smiles)
    total = n * args.decode_rounds
    rows.append((f"decode graphs (batch {n})", total / graph_time, peak_mb(dev)))
    rows.append((f"decode -> valid SMILES (batch {n})", valid * total / smiles_time, peak_mb(dev)))
    if bound:
        rows.append((f"  the same without the ring bound ({bound})",
                     fraction_valid(free) * total / free_time, peak_mb(dev)))  # fmt: skip

    if args.ckpt and args.processes > 1:
        rate = decode_in_processes(args)
        rows.append((f"decode -> valid SMILES, {args.processes} processes x 1 thread", rate,
                     peak_mb(dev)))  # fmt: skip

    from rdkit import Chem

    t0 = time.perf_counter()
    for s in smiles:
        Chem.MolToSmiles(Chem.MolFromSmiles(s))
    ref = len(smiles) / (time.perf_counter() - t0)
    rows.append(("reference: RDKit parse + canonical SMILES", ref, peak_mb(dev)))

    print(
        f"\ngraph VAE benchmark on {dev}, torch threads {torch.get_num_threads()}, "
        f"{'checkpoint ' + args.ckpt if args.ckpt else 'UNTRAINED model'}, "
        f"vocabulary {len(vocab)} types, max_atoms {vae.decoder.max_atoms}"
    )
    print(f"sampled: validity {valid:.4f}, mean heavy atoms {sum(atoms) / len(atoms):.1f}\n")
    print(f"| {'measure':<48} | {'molecules/s':>11} | {'x reference':>11} | {'peak MiB':>8} |")
    print(f"|{'-' * 50}|{'-' * 13}|{'-' * 13}|{'-' * 10}|")
    for name, rate, mem in rows:
        print(f"| {name:<48} | {rate:>11.0f} | {rate / ref:>11.3f} | {mem:>8.0f} |")
    goal = max(rate for name, rate, _ in rows if name.startswith("decode -> valid"))  # bounded
    verdict = "met" if goal >= 1000 else "NOT met"
    print(f"\ngoal >= 1000 valid molecules/s when decoding on this machine's {os.cpu_count()} "
          f"cores: {verdict} ({goal:.0f}/s, best row)")  # fmt: skip
    return 0


_WORKER: dict = {}


def _load_worker(ckpt: str) -> None:
    """Pool initializer: one thread, the checkpoint loaded once per process."""
    torch.set_num_threads(1)
    from medgen.molecules.module import GraphVAEModule

    module = GraphVAEModule.from_checkpoint(ckpt)
    _WORKER.update(vae=module.vae.eval(), vocab=module.vocab)


def _decode_block(indices: range, seed: int) -> list:
    from medgen.molecules.sampling import decode_indices

    return decode_indices(_WORKER["vae"], _WORKER["vocab"], indices, seed=seed)


def decode_in_processes(args) -> float:
    """Valid molecules/s of ``--processes`` warm 1-thread workers decoding blocks of
    ``--decode-batch`` prior samples (what ``medgen sample trainer.devices=N`` does on a CPU:
    every rank decodes its own share; sample i of a seed is the same in any worker)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from medgen.chem.metrics import fraction_valid

    ctx = multiprocessing.get_context("spawn")
    n, workers = args.decode_batch, args.processes
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_load_worker,
                             initargs=(args.ckpt,)) as pool:  # fmt: skip
        list(pool.map(_decode_block, [range(i, i + 50) for i in range(workers)], [99] * workers))
        blocks = [range(k * n, (k + 1) * n) for k in range(workers * args.decode_rounds)]
        t0 = time.perf_counter()
        out = [s for part in pool.map(_decode_block, blocks, [0] * len(blocks)) for s in part]
        wall = time.perf_counter() - t0
    return fraction_valid(out) * len(out) / wall


def profile_step(dm, module, device: str) -> None:
    """Print the operators that take the most time in one training step (forward + backward)."""
    vae = module.vae.to(device).train()
    batch = next(iter(dm.train_dataloader())).to(device)
    vae(batch)["recon"].backward()  # warm-up
    with torch.profiler.profile() as prof:
        out = vae(batch)
        (out["recon"] + 0.1 * out["kl"]).backward()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def round_trip(args) -> int:
    import pandas as pd
    from rdkit import Chem, rdBase

    from medgen.molecules.graph import FeaturizeError
    from medgen.molecules.graph import round_trip as graph_round_trip

    path = args.test
    if path is None:
        from medgen.datasets import moses_path

        path = moses_path("test")
    smiles = pd.read_csv(path)["SMILES"].tolist()
    if args.limit:
        smiles = smiles[: args.limit]
    kinds: Counter = Counter()
    examples: dict[str, str] = {}
    t0 = time.perf_counter()
    with rdBase.BlockLogs():
        for s in smiles:
            expected = Chem.MolToSmiles(Chem.MolFromSmiles(s), isomericSmiles=False)
            try:
                got = graph_round_trip(s)
                kind = "ok" if got == expected else "different canonical SMILES"
            except FeaturizeError as err:
                kind = f"not featurizable: {str(err).split(':')[0]}"
            except Exception as err:  # noqa: BLE001 - counted and reported
                kind = f"RDKit rejected the rebuilt molecule: {type(err).__name__}"
            kinds[kind] += 1
            examples.setdefault(kind, s)
    elapsed = time.perf_counter() - t0
    print(f"\nround trip on {len(smiles)} molecules of {path} ({len(smiles) / elapsed:.0f}/s)")
    for kind, count in kinds.most_common():
        print(f"  {kind:<50} {count:>8}  {count / len(smiles):8.5%}  e.g. {examples[kind]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

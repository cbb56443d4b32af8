"""``visionloop train gan``: a photo restorer trained the GAN recipe's way.

Two stages, each a run folder of the training engine (:mod:`.engine`):

1. ``--stage pretrain``: the generator (:class:`~visionloop.models.restorer.RestoreNet`, no
   BatchNorm) with the pixel L1 loss (plus the content loss if ``content_weight`` > 0): blurry
   but safe. Its ``best.pt`` starts the next stage.
2. ``--stage gan --init PRETRAIN/best.pt``: the generator fine-tuned against a discriminator,
   ``l1_weight * L1 + content_weight * content + adv_weight * adversarial``. Discriminators:
   ``patch`` (PatchGAN: a score per overlapping region) or ``unet`` (a score per pixel, as in
   Real-ESRGAN), both with spectral norm. Adversarial losses: ``lsgan`` (the default: the
   discriminator's raw logits pulled to 1 for clean and 0 for restored with a squared error),
   ``ralsgan`` (relativistic average: real judged against the mean fake and back), ``vanilla``
   (binary cross-entropy on the logits, for comparison).

Both stages: Adam (betas 0.9, 0.99), a constant learning rate (the recipe: don't tune it to the
decimal), the generator's exponential moving average (weights and buffers, decay 0.999, with a
warm-up for short runs) evaluated and saved as ``best.pt`` (what is served), validation PSNR /
SSIM on the luma and the Lite0 feature distance every epoch; early stop on the PSNR for the
pretrain, on the feature distance for the GAN stage (PSNR rewards blur, which the GAN stage
trades away on purpose). A loss that turns non-finite or explodes stops the run with the last
good checkpoint kept (the engine).

Data: photos from a folder (any size; decoded with the server's guards, upright), reduced once
so the short side is at most ``cache_side`` (bicubic; once per process, or per worker and
epoch with ``--workers``), random crops of ``crop`` px with flips,
damaged by :func:`~visionloop.train.degrade.degrade` (seeded per seed, epoch and index). The
validation photos (``--val-photos``, or a share of the folder chosen by a hash of each name)
get a centre crop and a fixed damage per photo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from visionloop.models.restorer import RestoreNet
from visionloop.train.degrade import Degradation
from visionloop.train.engine import EMA, Distributed, EngineConfig, Trainer, fit, load_scaler
from visionloop.train.image_metrics import LiteFeatures, psnr_y, ssim_y
from visionloop.train.restore_data import RestorePairs, in_validation, photo_files

__all__ = [
    "GAN_LOSSES",
    "GanConfig",
    "GanTrainer",
    "PatchDiscriminator",
    "RestorePairs",
    "UNetDiscriminator",
    "discriminator_loss",
    "generator_loss",
    "photo_files",
    "train_gan",
]

GAN_LOSSES = ("lsgan", "ralsgan", "vanilla")
DISCRIMINATORS = ("patch", "unet")


# -- discriminators ---------------------------------------------------------------------------


def _sn(conv: nn.Conv2d) -> nn.Module:
    return spectral_norm(conv)


class PatchDiscriminator(nn.Module):
    """PatchGAN with spectral norm: (N, 3, H, W) in [0, 1] -> (N, 1, H/8, W/8) logits, each
    judging a 54 px region (its receptive field)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.2, inplace=True)
        self.net = nn.Sequential(
            _sn(nn.Conv2d(3, width, 4, 2, 1)), act,
            _sn(nn.Conv2d(width, width * 2, 4, 2, 1)), act,
            _sn(nn.Conv2d(width * 2, width * 4, 4, 2, 1)), act,
            _sn(nn.Conv2d(width * 4, width * 4, 3, 1, 1)), act,
            nn.Conv2d(width * 4, 1, 3, 1, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x * 2.0 - 1.0)
        return out


class UNetDiscriminator(nn.Module):
    """A U-Net with spectral norm (as Real-ESRGAN's): three stride-2 steps down, three up with
    skips, a logit per pixel: (N, 3, H, W) -> (N, 1, H, W), H and W divisible by 8."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.first = nn.Conv2d(3, w, 3, 1, 1)
        self.down = nn.ModuleList(
            [_sn(nn.Conv2d(w, w * 2, 4, 2, 1)), _sn(nn.Conv2d(w * 2, w * 4, 4, 2, 1)),
             _sn(nn.Conv2d(w * 4, w * 8, 4, 2, 1))]
        )  # fmt: skip
        self.up = nn.ModuleList(
            [_sn(nn.Conv2d(w * 8, w * 4, 3, 1, 1)), _sn(nn.Conv2d(w * 4, w * 2, 3, 1, 1)),
             _sn(nn.Conv2d(w * 2, w, 3, 1, 1))]
        )  # fmt: skip
        self.refine = nn.Sequential(
            _sn(nn.Conv2d(w, w, 3, 1, 1)), nn.LeakyReLU(0.2, inplace=True),
            _sn(nn.Conv2d(w, w, 3, 1, 1)), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, 1, 3, 1, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.leaky_relu
        y = act(self.first(x * 2.0 - 1.0), 0.2)
        skips = [y]
        for conv in self.down:
            y = act(conv(y), 0.2)
            skips.append(y)
        skips.pop()
        for conv in self.up:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = act(conv(y), 0.2) + skips.pop()
        out: torch.Tensor = self.refine(y)
        return out


# -- adversarial losses -----------------------------------------------------------------------


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on its logits for clean (``real``) and restored (``fake``)."""
    if kind == "lsgan":
        return 0.5 * (((real - 1) ** 2).mean() + (fake**2).mean())
    if kind == "ralsgan":
        return 0.5 * (
            ((real - fake.mean() - 1) ** 2).mean() + ((fake - real.mean() + 1) ** 2).mean()
        )
    if kind == "vanilla":
        ones, zeros = torch.ones_like(real), torch.zeros_like(fake)
        return F.binary_cross_entropy_with_logits(real, ones) + F.binary_cross_entropy_with_logits(
            fake, zeros
        )
    raise ValueError(f"unknown GAN loss {kind!r}; use one of {', '.join(GAN_LOSSES)}")


def generator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial loss: make ``fake`` score as the discriminator scores real
    (``real`` is used by the relativistic loss only)."""
    if kind == "lsgan":
        return ((fake - 1) ** 2).mean()
    if kind == "ralsgan":
        return 0.5 * (
            ((fake - real.mean() - 1) ** 2).mean() + ((real - fake.mean() + 1) ** 2).mean()
        )
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    raise ValueError(f"unknown GAN loss {kind!r}; use one of {', '.join(GAN_LOSSES)}")


def _float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    return images.to(device).permute(0, 3, 1, 2).float().div(255.0)


# -- training ---------------------------------------------------------------------------------


@dataclass
class GanConfig:
    photos: Path
    out: Path
    stage: Literal["pretrain", "gan"] = "pretrain"
    init: Path | None = None  # the pretrain run's best.pt, for the gan stage
    val_photos: Path | None = None
    val_fraction: float = 0.15
    crop: int = 96
    epochs: int = 20
    batch_size: int = 8
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    width: int = 48
    blocks: int = 6
    norm: Literal["none", "batch"] = "none"
    discriminator: Literal["patch", "unet"] = "unet"
    gan_loss: Literal["lsgan", "ralsgan", "vanilla"] = "lsgan"
    l1_weight: float = 1.0
    content_weight: float = 0.0
    adv_weight: float = 0.1
    ema: float | None = 0.999
    patience: int = 5
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    workers: int = 0
    max_batches: int | None = None
    cache_side: int = 384
    crops_per_photo: int = 1  # random crops of each training photo per epoch
    damage: dict[str, Any] = field(default_factory=dict)  # Degradation fields

    def __post_init__(self) -> None:
        if self.stage not in ("pretrain", "gan"):
            raise ValueError(f"stage must be pretrain or gan, got {self.stage!r}")
        if self.discriminator not in DISCRIMINATORS:
            raise ValueError(f"discriminator must be one of {', '.join(DISCRIMINATORS)}")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {', '.join(GAN_LOSSES)}")
        if self.crops_per_photo < 1:
            raise ValueError(f"crops_per_photo must be at least 1, got {self.crops_per_photo}")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) or None, got {self.ema}")
        if not 0 < self.val_fraction < 1 and self.val_photos is None:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


def train_gan(config: GanConfig, on_epoch: Any = None) -> dict[str, Any]:
    """Train one stage; returns the best epoch's metrics (see the module docstring)."""
    engine = EngineConfig(
        out=config.out, epochs=config.epochs, patience=config.patience, seed=config.seed,
        device=config.device, resume=config.resume, workers=config.workers,
        max_batches=config.max_batches,
    )  # fmt: skip
    return fit(GanTrainer(config), engine, on_epoch)


def split_photos(config: GanConfig) -> tuple[list[Path], list[Path]]:
    photos = photo_files(config.photos)
    if config.val_photos is not None:
        val = photo_files(config.val_photos)
        held_out = {p.resolve() for p in val}
        train = [p for p in photos if p.resolve() not in held_out]  # never both
        if not train:
            raise ValueError(f"every photo of {config.photos} is a validation photo")
        return train, val
    val = [p for p in photos if in_validation(p, config.photos, config.val_fraction)]
    train = [p for p in photos if p not in set(val)]
    if not val or not train:
        raise ValueError(
            f"{config.photos}: {len(photos)} photos leave {len(train)} to train and {len(val)} "
            "to validate; add photos or pass --val-photos"
        )
    return train, val


class GanTrainer(Trainer):
    """One stage of the restorer (see the module docstring)."""

    kind = "gan"
    mode: Literal["max", "min"] = "max"

    def __init__(self, config: GanConfig) -> None:
        self.settings = config
        if config.stage == "gan" and config.init is None:
            raise ValueError("the gan stage starts from a pretrain run: pass --init RUN/best.pt")
        self.monitor = "psnr" if config.stage == "pretrain" else "feature_distance"
        self.mode = "max" if config.stage == "pretrain" else "min"
        damage = Degradation(**config.damage)
        train, val = split_photos(config)
        self.train_data = RestorePairs(
            train, config.crop, True, config.seed, damage, config.cache_side,
            config.crops_per_photo,
        )  # fmt: skip
        self.val_data = RestorePairs(
            val, config.crop, False, config.seed, damage, config.cache_side
        )

    def config(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.settings).items()}

    def fingerprints(self) -> dict[str, Any]:
        return {"train_photos": len(self.train_data.photos), "val_photos": len(self.val_data),
                "train_fingerprint": self.train_data.fingerprint(),
                "val_fingerprint": self.val_data.fingerprint()}  # fmt: skip

    def train_set(self) -> RestorePairs:
        return self.train_data

    @property
    def batch_size(self) -> int:
        return self.settings.batch_size

    def setup(self, dist: Distributed, steps: int, epoch_steps: int) -> None:
        c = self.settings
        self.device = dist.device
        self.generator = RestoreNet(c.width, c.blocks, c.norm).to(self.device)
        if c.init is not None:
            try:
                state = torch.load(c.init, map_location=self.device, weights_only=True)
                self.generator.load_state_dict(state)
            except (OSError, RuntimeError, EOFError) as exc:
                raise ValueError(f"cannot start from {c.init}: {exc}") from None
        self.g = dist.wrap(self.generator)
        self.optimiser_g = torch.optim.Adam(self.generator.parameters(), c.lr_g, betas=(0.9, 0.99))
        self.ema = EMA(self.generator, c.ema, warmup=True) if c.ema is not None else None
        self.features = LiteFeatures().to(self.device)
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.discriminator: nn.Module | None = None
        if c.stage == "gan":
            make = PatchDiscriminator if c.discriminator == "patch" else UNetDiscriminator
            self.discriminator = make().to(self.device)
            self.d = dist.wrap(self.discriminator)
            self.optimiser_d = torch.optim.Adam(
                self.discriminator.parameters(), c.lr_d, betas=(0.9, 0.99)
            )

    def start_epoch(self, epoch: int) -> None:
        self.train_data.epoch = epoch
        self.g.train()
        if self.discriminator is not None:
            self.d.train()

    def _content(self, restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        return self.features.distance(restored, clean).mean()

    def step(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        c = self.settings
        damaged, clean = (_float(b, self.device) for b in batch)
        losses: dict[str, torch.Tensor] = {}
        with torch.autocast(self.device.type, enabled=self.amp):
            restored = self.g(damaged)
        restored = restored.float()
        if self.discriminator is not None:
            with torch.autocast(self.device.type, enabled=self.amp):
                scores = self.d(torch.cat([clean, restored.detach()])).float()
            real, fake = scores.chunk(2)
            loss_d = discriminator_loss(c.gan_loss, real, fake)
            self.optimiser_d.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()  # type: ignore[no-untyped-call]
            self.scaler.step(self.optimiser_d)
            losses["loss_d"] = loss_d.detach()
        l1 = F.l1_loss(restored, clean)
        total = c.l1_weight * l1
        losses["l1"] = l1.detach()
        if c.content_weight > 0:
            content = self._content(restored, clean)
            total = total + c.content_weight * content
            losses["content"] = content.detach()
        if self.discriminator is not None:
            with torch.autocast(self.device.type, enabled=self.amp):
                scores = self.d(torch.cat([clean, restored])).float()
            real, fake = scores.chunk(2)
            adversarial = generator_loss(c.gan_loss, real.detach(), fake)
            total = total + c.adv_weight * adversarial
            losses["adversarial"] = adversarial.detach()
        self.optimiser_g.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(self.optimiser_g)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.generator)
        losses["loss_g"] = total.detach()
        return losses

    def served(self) -> nn.Module:
        """The generator that is evaluated and saved: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.generator

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        network = self.served().eval()
        loader = torch.utils.data.DataLoader(self.val_data, batch_size=8, shuffle=False)
        psnr, ssim, distance, before = [], [], [], []
        for damaged_u8, clean_u8 in loader:
            damaged, clean = _float(damaged_u8, self.device), _float(clean_u8, self.device)
            restored = network(damaged).clamp(0, 1)
            as_255 = (restored * 255).round()
            clean_255 = clean * 255
            psnr.append(psnr_y(as_255, clean_255))
            ssim.append(ssim_y(as_255, clean_255))
            before.append(psnr_y(damaged * 255, clean_255))
            distance.append(self.features.distance(restored, clean))
        self.generator.train()
        return {
            "psnr": round(float(torch.cat(psnr).mean()), 4),
            "ssim": round(float(torch.cat(ssim).mean()), 5),
            "feature_distance": round(float(torch.cat(distance).mean()), 5),
            "psnr_degraded": round(float(torch.cat(before).mean()), 4),
        }

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "generator": self.generator.state_dict(), "optimiser_g": self.optimiser_g.state_dict(),
            "scaler": self.scaler.state_dict(),
        }  # fmt: skip
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["optimiser_d"] = self.optimiser_d.state_dict()
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimiser_g.load_state_dict(state["optimiser_g"])
        load_scaler(self.scaler, state.get("scaler"))
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.optimiser_d.load_state_dict(state["optimiser_d"])

    def best_weights(self) -> dict[str, torch.Tensor]:
        return dict(self.served().state_dict())

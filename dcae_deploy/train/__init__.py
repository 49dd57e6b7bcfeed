"""Training: DC-AE (three-phase decoupled high-resolution adaptation) and SANA flow matching.

``python -m dcae_deploy.train autoencoder|denoiser ...`` runs one training job, single process or
under ``torchrun``. Modules:

* :mod:`~dcae_deploy.train.loop`: the shared loop (DDP, AdamW, EMA, AMP on GPU, clipping, logs,
  atomic checkpoints with exact resume).
* :mod:`~dcae_deploy.train.autoencoder`: the three DC-AE phases and their trainable sets.
* :mod:`~dcae_deploy.train.denoiser`: rectified-flow training of the SANA denoiser on cached latents.
* :mod:`~dcae_deploy.train.data`: image folders, the procedural shapes set, latent caches.
"""

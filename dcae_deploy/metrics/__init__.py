"""Image metrics as the DC-AE release reports them (PSNR, SSIM, LPIPS, FID), on torchmetrics, without torchvision.

- :mod:`~dcae_deploy.metrics.reconstruction`: the release's reconstruction metrics, per backend, synced under torchrun;
- :mod:`~dcae_deploy.metrics.fid`: feature statistics, the Fréchet distance, the release's ``.npz`` reference files;
- :mod:`~dcae_deploy.metrics.inception`: the FID Inception-v3 from a local ``pt_inception-2015-12-05`` file;
- :mod:`~dcae_deploy.metrics.lpips`: LPIPS (AlexNet / VGG16) from local backbone weights;
- :mod:`~dcae_deploy.metrics.images`: image folders, their checks and the release's centre crop.

Weights are always local files; nothing is downloaded. ``python -m dcae_deploy.evaluate reconstruction`` is the
command line (:mod:`dcae_deploy.evaluate.reconstruction`).
"""

"""A replica of the thesis's U-Net module (THESIS.md §6) with its attribute names, for the import tests.

Written from the description, not copied: `inc`, `down1..4`, `up1..4`, `outc` with `double_conv`,
`maxpool_conv` and `conv` inside, widths 64..1024, transposed-convolution up-sampling, and a forward that
returns `(logits, softmax)` as the thesis's does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ThesisDoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        layers = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        self.double_conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class ThesisDown(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), ThesisDoubleConv(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class ThesisUp(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
        self.conv = ThesisDoubleConv(cin, cout)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        low = self.up(low)
        dy, dx = skip.shape[2] - low.shape[2], skip.shape[3] - low.shape[3]
        low = F.pad(low, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, low], dim=1))


class ThesisOutConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ThesisUNet(nn.Module):
    def __init__(self, n_channels: int = 14, n_classes: int = 4) -> None:
        super().__init__()
        self.inc = ThesisDoubleConv(n_channels, 64)
        self.down1, self.down2 = ThesisDown(64, 128), ThesisDown(128, 256)
        self.down3, self.down4 = ThesisDown(256, 512), ThesisDown(512, 1024)
        self.up1, self.up2 = ThesisUp(1024, 512), ThesisUp(512, 256)
        self.up3, self.up4 = ThesisUp(256, 128), ThesisUp(128, 64)
        self.outc = ThesisOutConv(64, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(self.down4(x4), x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        logits = self.outc(self.up4(x, x1))
        return logits, torch.softmax(logits, dim=1)

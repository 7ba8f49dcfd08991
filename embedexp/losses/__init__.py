"""One small module per loss; every loss maps embeddings (and labels) to a scalar."""

from embedexp.losses.contrastive import ContrastiveLoss, OnlineContrastiveLoss
from embedexp.losses.cosine import CosineSimilarityLoss
from embedexp.losses.distill_kl import DistillKLLoss
from embedexp.losses.gist import GISTLoss
from embedexp.losses.infonce import InfoNCELoss
from embedexp.losses.margin_mse import MarginMSELoss
from embedexp.losses.matryoshka import MatryoshkaLoss
from embedexp.losses.rerank_bce import RerankBCELoss
from embedexp.losses.rerank_listwise import RerankListwiseLoss
from embedexp.losses.triplet import TripletLoss
from embedexp.losses.tsdae import TSDAELoss

__all__ = [
    "InfoNCELoss",
    "TripletLoss",
    "CosineSimilarityLoss",
    "ContrastiveLoss",
    "OnlineContrastiveLoss",
    "TSDAELoss",
    "GISTLoss",
    "MatryoshkaLoss",
    "MarginMSELoss",
    "DistillKLLoss",
    "RerankBCELoss",
    "RerankListwiseLoss",
]

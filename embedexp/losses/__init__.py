from embedexp.losses.infonce import InfoNCELoss

__all__ = ["InfoNCELoss"]

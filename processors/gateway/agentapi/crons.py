"""Crons (stub)."""

from fastapi import APIRouter

router = APIRouter(tags=["crons"])

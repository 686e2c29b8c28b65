from setuptools import setup

setup(cffi_modules=["core/kernel_build.py:ffibuilder"])

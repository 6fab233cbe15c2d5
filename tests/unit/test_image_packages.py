"""A user's extra guest packages: a separate image under its own key, the lab's image untouched,
and names that are not Debian package names refused before anything is built."""

import pytest

from lab import LabError
from lab.vm import image


def test_extra_packages_get_their_own_image_key():
    lab_key = image.cache_key()
    nginx = image.cache_key(["nginx"])
    assert nginx != lab_key
    assert image.cache_key(["redis-server", "nginx"]) == image.cache_key(["nginx", "redis-server", "nginx"])
    assert image.cache_key([]) == lab_key == image.image_key()


@pytest.mark.parametrize("bad", ["Nginx", "nginx; rm -rf /", "-o", "", "a"])
def test_bad_package_names_are_refused_with_the_setting_named(bad):
    with pytest.raises(LabError, match="--image-package / sockredir_image_packages"):
        image.ensure_image(extra_packages=[bad])

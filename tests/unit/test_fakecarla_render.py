"""The fake camera: lateral offset and heading move the road in the expected direction, the
top-down view works, and images are deterministic."""
import numpy as np
import pytest

from rollout.fakecarla import make_module
from rollout.fakecarla.mapdata import ASPHALT, YELLOW
from rollout.fakecarla.renderer import PALETTE
from common.config import FakeCarlaConfig

WIDTH, HEIGHT = 160, 120
YELLOW_BGR = PALETTE[YELLOW, :3].astype(int)
ASPHALT_BGR = PALETTE[ASPHALT, :3].astype(int)
ROAD_POINT = (60.0, -1.75)  # lane -1 of road 1, a straight going west (CARLA coordinates)


@pytest.fixture(scope="module")
def rig():
    carla = make_module(FakeCarlaConfig(camera_delay_s=0.0))
    client = carla.Client("127.0.0.1", 2000)
    world = client.get_world()
    settings = world.get_settings()
    settings.synchronous_mode, settings.fixed_delta_seconds = True, 0.05
    world.apply_settings(settings)
    waypoint = world.get_map().get_waypoint(carla.Location(x=ROAD_POINT[0], y=ROAD_POINT[1]))
    library = world.get_blueprint_library()
    ego = world.spawn_actor(library.find("vehicle.tesla.model3"), waypoint.transform)
    return carla, world, waypoint, ego


def _camera(carla, world, ego, location, rotation):
    bp = world.get_blueprint_library().find("sensor.camera.rgb")
    bp.set_attribute("image_size_x", str(WIDTH))
    bp.set_attribute("image_size_y", str(HEIGHT))
    bp.set_attribute("fov", "90")
    camera = world.spawn_actor(bp, carla.Transform(location, rotation), attach_to=ego)
    images = []
    camera.listen(images.append)
    return camera, images


def _shoot(rig, lateral_m=0.0, yaw_deg=0.0, mount=None):
    carla, world, waypoint, ego = rig
    t = waypoint.transform
    right = t.get_right_vector()
    where = carla.Location(x=t.location.x + lateral_m * right.x, y=t.location.y + lateral_m * right.y)
    ego.set_transform(carla.Transform(where, carla.Rotation(yaw=t.rotation.yaw + yaw_deg)))
    location, rotation = mount or (carla.Location(x=1.6, z=1.7), carla.Rotation(pitch=-15))
    camera, images = _camera(carla, world, ego, location, rotation)
    frame = world.tick()
    deadline = 200
    while not any(i.frame == frame for i in images) and deadline:
        import time
        time.sleep(0.005)
        deadline -= 1
    camera.stop()
    camera.destroy()
    image = next(i for i in images if i.frame == frame)
    assert (image.width, image.height, len(image.raw_data)) == (WIDTH, HEIGHT, WIDTH * HEIGHT * 4)
    return np.frombuffer(image.raw_data, np.uint8).reshape(HEIGHT, WIDTH, 4)


def _yellow_column(image):
    lower = image[HEIGHT // 2:, :, :3].astype(int)
    mask = np.abs(lower - YELLOW_BGR).sum(axis=2) < 60
    assert mask.sum() > 20, "the centre line is not visible"
    return float(np.nonzero(mask)[1].mean())


def test_lateral_offset_moves_the_centre_line_the_other_way(rig):
    left, centre, right = (_yellow_column(_shoot(rig, lateral_m=d)) for d in (-1.0, 0.0, 1.0))
    # The yellow centre line is on the car's left; moving the car right moves it left in the image.
    assert left > centre + 3 > right + 6
    assert centre < WIDTH / 2


def test_images_at_offsets_differ_in_pixels(rig):
    a, b, c = (_shoot(rig, lateral_m=d) for d in (-1.0, 0.0, 1.0))
    for x, y in ((a, b), (b, c)):
        assert np.mean(np.any(x != y, axis=2)) > 0.05


def test_heading_to_the_right_moves_the_road_left(rig):
    straight = _yellow_column(_shoot(rig))
    turned = _yellow_column(_shoot(rig, yaw_deg=8.0))
    assert turned < straight - 3


def test_sky_on_top_and_asphalt_below(rig):
    image = _shoot(rig)
    top, bottom = image[2, WIDTH // 2, :3], image[HEIGHT - 3, WIDTH // 2 + 10, :3]
    assert top[0] > top[2] + 40  # blue sky (BGR)
    assert np.abs(bottom.astype(int) - ASPHALT_BGR).sum() < 10


def test_top_down_camera_sees_the_ego_and_the_road(rig):
    carla = rig[0]
    image = _shoot(rig, mount=(carla.Location(z=30.0), carla.Rotation(pitch=-90.0)))
    centre = image[HEIGHT // 2 - 3: HEIGHT // 2 + 3, WIDTH // 2 - 3: WIDTH // 2 + 3, :3].reshape(-1, 3)
    grey = np.abs(centre.astype(int) - ASPHALT_BGR).sum(axis=1) < 30
    assert not grey.any(), "the ego box must cover the image centre"
    road = np.abs(image[..., :3].astype(int) - ASPHALT_BGR).sum(axis=2) < 30
    assert road.mean() > 0.1
    assert np.abs(image[..., :3].astype(int) - YELLOW_BGR).sum(axis=2).min() < 60


def test_same_pose_same_image(rig):
    assert np.array_equal(_shoot(rig, lateral_m=0.3), _shoot(rig, lateral_m=0.3))


def test_sphere_culling_never_drops_a_box_the_corner_test_keeps():
    from rollout.fakecarla import renderer as R
    from rollout.fakecarla.mapdata import Raster
    rng = np.random.default_rng(0)
    cam = R.CameraRenderer(Raster.__new__(Raster), WIDTH, HEIGHT, 90.0)
    n = 4000
    boxes = np.zeros((n, R.BOX_COLUMNS))
    boxes[:, 0:2] = rng.uniform(-40, 40, (n, 2))
    boxes[:, 2] = rng.uniform(-1, 1, n)
    boxes[:, 3] = rng.uniform(-np.pi, np.pi, n)
    boxes[:, 4:6] = rng.uniform(0.1, 3.0, (n, 2))
    boxes[:, 6] = rng.uniform(0.2, 4.0, n)
    yaw, pitch = 0.7, -0.3  # a camera 1.7 m up, turned and looking down
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    rotation = np.array([[cy * cp, -sy, -cy * sp], [sy * cp, cy, -sy * sp], [sp, 0.0, cp]])
    position = np.array([1.0, 2.0, 1.7])
    scene = R._box_set(boxes)
    by_corners = cam._outside_frustum((scene.corners - position) @ rotation)
    by_sphere = cam._sphere_outside_frustum((scene.sphere_centres - position) @ rotation,
                                            scene.radii)
    assert not (by_sphere & ~by_corners).any()
    assert by_sphere.sum() > n / 3  # and it does cull: most of these lie off to the sides


def test_static_boxes_render_as_if_passed_with_every_frame():
    # The server hands the map's poles to the renderer once; the images must not change.
    from rollout.fakecarla import renderer as R
    from rollout.fakecarla.mapdata import load_assets
    raster = load_assets(FakeCarlaConfig().xodr_path).raster
    rng = np.random.default_rng(1)
    n = 60
    boxes = np.zeros((n, R.BOX_COLUMNS))
    boxes[:, 0:2] = rng.uniform(-30, 30, (n, 2))
    boxes[:, 3] = rng.uniform(-np.pi, np.pi, n)
    boxes[:, 4:6] = rng.uniform(0.2, 2.0, (n, 2))
    boxes[:, 6] = rng.uniform(0.5, 3.0, n)
    boxes[:, 7] = rng.integers(0, 9, n)
    every_frame = R.CameraRenderer(raster, WIDTH, HEIGHT, 90.0)
    static = R.CameraRenderer(raster, WIDTH, HEIGHT, 90.0, boxes[:40])
    drawn = 0
    for yaw in np.linspace(-np.pi, np.pi, 8, endpoint=False):
        matrix = np.eye(4)
        matrix[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
        matrix[:3, 3] = [0.0, 0.0, 1.7]
        expected = every_frame.render(matrix, boxes)
        np.testing.assert_array_equal(static.render(matrix, boxes[40:]), expected)
        drawn += int((expected != every_frame.render(matrix, boxes[:0])).any())
    assert drawn >= 6  # the boxes are in view in most directions

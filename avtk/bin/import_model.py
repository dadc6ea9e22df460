"""Convert a foreign checkpoint (the seed's A-Vox2/V-Vox2/V-Glint, ECAPA-TDNN, insightface) into an avtk model."""
import logging

from avtk.command import make_parser
from avtk.models.importer import FACE_ARCHS, FORMATS


def get_parser():
    p = make_parser(
        "Convert a foreign checkpoint into an avtk model file for `avtk extract-embeddings`. Formats: a-vox2 (the "
        "seed's A-Vox2.model: ECAPA-TDNN C=1024 with the seed's front end), ecapa-pretrain (ECAPA-TDNN's "
        "pretrain.model), v-vox2 (the seed's V-Vox2.model: iresnet18 fed BGR), v-glint (V-Glint.model: "
        "insightface iresnet50, fed BGR as the seed's evaluation did), insightface (a backbone.pth of any depth, "
        "RGB); --channels overrides the channel order. Every missing, unexpected "
        "and mis-shaped key is listed with its shapes, and the import fails unless --allow-partial. The AAM "
        "matrix, if any, is kept in the model file; the config records the front end, the channel order and the "
        "source file's sha256. See avtk/models/importer.py for the key mapping."
    )
    p.add_argument("--format", required=True, choices=list(FORMATS), help="layout of the input checkpoint")
    p.add_argument("--arch", choices=list(FACE_ARCHS),
                   help="face formats: the iresnet depth; unset, v-vox2 is iresnet18, v-glint iresnet50, and "
                        "insightface takes the depth its blocks per stage give")
    p.add_argument("--channels", choices=["rgb", "bgr"],
                   help="face formats: the channel order the network is fed, instead of the format's (v-vox2 and "
                        "v-glint: bgr, as the seed's evaluation read frames with cv2.imread; insightface: rgb, as "
                        "insightface trains). --channels rgb runs V-Glint as insightface meant it, which the seed "
                        "did not")
    p.add_argument("--allow-partial", action="store_true",
                   help="load the keys that fit and warn, instead of failing on missing, unexpected or "
                        "mis-shaped keys")
    p.add_argument("input", help="the checkpoint (a torch-saved flat state_dict)")
    p.add_argument("output", help="the avtk model file to write (e.g. exp/a_vox2/model.pt)")
    return p


def main(args):
    from avtk.models.importer import describe, import_checkpoint, write_model

    log = logging.getLogger(__name__)
    imported = import_checkpoint(args.input, args.format, args.arch, args.allow_partial, args.channels)
    write_model(args.output, imported)
    log.info("%s", describe(imported))
    log.info("wrote %s (source sha256 %s)", args.output, imported.config["source"]["sha256"])
    return 0

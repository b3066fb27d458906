"""The single source of labels used anywhere in wtivision.

Every label a model, a dataset converter, a report or a test uses comes from here.
Labels are lower-case ASCII identifiers; ``family`` groups them into the four
families of weapons technical intelligence work.
"""

from __future__ import annotations

from dataclasses import dataclass

FIREARM = "firearm"
AMMUNITION = "ammunition"
IED_COMPONENT = "ied_component"
MARKING = "marking"

FAMILIES: tuple[str, ...] = (FIREARM, AMMUNITION, IED_COMPONENT, MARKING)

# kinds of text reading
TEXT_SERIAL = "serial"
TEXT_HEADSTAMP = "headstamp"
TEXT_MARKING = "marking"
TEXT_KINDS: tuple[str, ...] = (TEXT_SERIAL, TEXT_HEADSTAMP, TEXT_MARKING)


@dataclass(frozen=True)
class Label:
    name: str
    family: str
    description: str


_LABELS: tuple[Label, ...] = (
    # firearms
    Label("pistol", FIREARM, "self-loading or single-shot handgun (not a revolver)"),
    Label("revolver", FIREARM, "handgun with a revolving cylinder"),
    Label("rifle", FIREARM, "shoulder-fired rifled long gun (bolt, lever, semi or select fire)"),
    Label("shotgun", FIREARM, "smooth-bore shoulder-fired long gun"),
    Label("submachine_gun", FIREARM, "automatic weapon firing pistol calibre ammunition"),
    Label("machine_gun", FIREARM, "belt- or box-fed automatic weapon, light to heavy"),
    Label("launcher", FIREARM, "grenade or rocket launcher, recoilless weapon"),
    # ammunition
    Label("cartridge", AMMUNITION, "small-arms cartridge or case seen from the side"),
    Label("case_head", AMMUNITION, "cartridge case head seen end-on, carries the headstamp"),
    Label("magazine", AMMUNITION, "detachable box, drum or pan magazine"),
    Label("grenade", AMMUNITION, "hand or rifle grenade"),
    Label("mortar_or_rocket_round", AMMUNITION, "mortar bomb, rocket, projectile or shell"),
    Label("landmine_uxo", AMMUNITION, "landmine, submunition or other unexploded ordnance"),
    # IED components
    Label("battery", IED_COMPONENT, "battery or battery pack (power source)"),
    Label("wire", IED_COMPONENT, "wire, cable or command wire"),
    Label("switch", IED_COMPONENT, "switch: toggle, pressure plate, tripwire release, relay"),
    Label("detonator", IED_COMPONENT, "electric or non-electric detonator, blasting cap"),
    Label("mobile_phone", IED_COMPONENT, "mobile phone or radio handset used as an initiator"),
    Label("circuit_board", IED_COMPONENT, "printed circuit board, receiver or control module"),
    Label("timer", IED_COMPONENT, "clock, watch or electronic timer"),
    Label("container", IED_COMPONENT, "container or casing: pipe, pressure cooker, jerrycan, box"),
    # markings
    Label("marking", MARKING, "stamped, engraved or printed text region (serial, markings)"),
)

LABELS: dict[str, Label] = {lab.name: lab for lab in _LABELS}

#: Default class order of the wtivision object detector. Index i of the model's
#: output is DETECTOR_CLASSES[i]. Changing the order breaks trained models.
DETECTOR_CLASSES: tuple[str, ...] = tuple(lab.name for lab in _LABELS)

# Firearm typology (basegun-ml classifier): original French class -> English label.
TYPOLOGY_CLASSES: dict[str, str] = {
    "autre_pistolet": "other_pistol",
    "epaule_a_levier_sous_garde": "lever_action_long_gun",
    "epaule_a_pompe": "pump_action_long_gun",
    "epaule_a_un_coup_par_canon": "break_action_long_gun",
    "epaule_a_verrou": "bolt_action_long_gun",
    "epaule_mecanisme_ancien": "antique_mechanism_long_gun",
    "epaule_semi_auto_style_chasse": "semi_auto_hunting_long_gun",
    "epaule_semi_auto_style_militaire_milieu_20e": "semi_auto_military_mid_20th_century_long_gun",
    "pistolet_mecanisme_ancien": "antique_mechanism_pistol",
    "pistolet_semi_auto_moderne": "modern_semi_auto_pistol",
    "revolver": "revolver",
    "semi_auto_style_militaire_autre": "other_military_style_semi_auto",
}

#: Which detector label each typology implies (used to cross-check a crop).
TYPOLOGY_TO_DETECTOR: dict[str, str] = {
    "other_pistol": "pistol",
    "lever_action_long_gun": "rifle",
    "pump_action_long_gun": "shotgun",
    "break_action_long_gun": "shotgun",
    "bolt_action_long_gun": "rifle",
    "antique_mechanism_long_gun": "rifle",
    "semi_auto_hunting_long_gun": "rifle",
    "semi_auto_military_mid_20th_century_long_gun": "rifle",
    "antique_mechanism_pistol": "pistol",
    "modern_semi_auto_pistol": "pistol",
    "revolver": "revolver",
    "other_military_style_semi_auto": "rifle",
}


#: Detector firearm labels by the group a glance can tell: a handgun or a long gun (the shipped detector's
#: `pistol` covers all handguns and `rifle` all long guns).
FIREARM_GROUPS: dict[str, str] = {
    "pistol": "handgun", "revolver": "handgun",
    "rifle": "long_gun", "shotgun": "long_gun", "submachine_gun": "long_gun", "machine_gun": "long_gun",
}


def typology_disagrees(detector_label: str, typology_label: str) -> bool:
    """Whether a typology given to a detector's firearm box implies the other group (a long-gun typology on a
    ``pistol`` box, a handgun typology on a ``rifle`` box): a person should look, as the typology classifier
    is often wrong on crops of firearms in scenes (measured: models/cards/typology-basegun.md). False when
    either label has no group (``launcher``, an unknown typology)."""
    implied = TYPOLOGY_TO_DETECTOR.get(typology_label, "")
    a, b = FIREARM_GROUPS.get(detector_label), FIREARM_GROUPS.get(implied)
    return a is not None and b is not None and a != b


def family_of(label: str) -> str:
    """Family of a detector label; raises KeyError with the known labels if unknown."""
    try:
        return LABELS[label].family
    except KeyError:
        raise KeyError(f"unknown label {label!r}; known labels: {', '.join(LABELS)}") from None


def labels_in(family: str) -> tuple[str, ...]:
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return tuple(lab.name for lab in _LABELS if lab.family == family)


def check_label(label: str) -> str:
    family_of(label)
    return label

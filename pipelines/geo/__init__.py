"""Pure geospatial building blocks: grids, bands, terrain, inventories, COGs. No Beam."""
